//! The sysctls Pier's dataplane needs, read and written through `/proc/sys`.
//!
//! `/proc/sys/net/...` shows the network namespace of the *calling thread*, so these functions must
//! run on a thread inside the namespace they are meant for (a `netns::run_in` thread). Pier sets:
//!
//! - `net.ipv4.ip_forward = 1` in the host namespace: traffic between a bridge and the outside
//!   (egress with masquerade, published ports from other hosts) is routed by the node. Writing it
//!   also sets `forwarding` on every interface of that namespace.
//! - `net.ipv4.conf.<bridge>.route_localnet = 1` on each Pier bridge: a published port reached on
//!   `127.0.0.1` is DNATed to an endpoint, and the kernel otherwise drops packets with a loopback
//!   address that cross a non-loopback interface as martians.
//! - `net.ipv6.conf.all.forwarding = 1` in the host namespace when a network on the node has
//!   IPv6. IPv6 has no per-interface forwarding switch as IPv4's `conf.<link>.forwarding` (the
//!   per-link value only chooses host or router behaviour): only `all` lets the node route
//!   between a bridge and the outside, so this is the IPv6 twin of `ip_forward`, as Docker and
//!   netavark set it. Writing it also sets `forwarding` on every link and on `default`.
//!   A link with forwarding on ignores router advertisements unless its `accept_ra` is 2, and
//!   the kernel drops the default routes it had learnt from them: a node whose uplink gets its
//!   IPv6 default route by SLAAC/RA needs `net.ipv6.conf.<uplink>.accept_ra = 2`. Docker (27+,
//!   `setupIPv6Forwarding`) and netavark leave that to the node's administrator, and so does
//!   Pier: it never changes the node's own links.
//! - `net.ipv6.conf.<bridge>.accept_ra = 0` on each Pier bridge (as Docker's
//!   `setupDefaultSysctl`): a container must not be able to give the node an IPv6 default route
//!   or address by sending a router advertisement into its bridge (CVE-2020-13401), whatever
//!   `default.accept_ra` the node has.
//! - In an endpoint's namespace, only when its interface has IPv6 turned off (a namespace made
//!   while `default.disable_ipv6` was 1): `net.ipv6.conf.{all,default,<interface>}.disable_ipv6
//!   = 0`. A fresh namespace has IPv6 on, so an attach enters no namespace thread for it.
//!
//! Nothing else is changed; nothing is reverted on reset (other software may rely on forwarding).
//!
//! Plans do not read these files: the values come back with the link dump (`IFLA_AF_SPEC`, the
//! IPv4 and IPv6 settings of `lo` and of each bridge), so a plan needs no thread in the host
//! namespace. Only a write (rare: a new bridge, or a value changed by hand) goes through here.

use std::path::PathBuf;

/// Reading or writing one sysctl failed.
#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("reading sysctl {key}")]
    Read {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing sysctl {key} = {value}")]
    Write {
        key: String,
        value: String,
        #[source]
        source: std::io::Error,
    },
}

/// `net.ipv4.ip_forward`.
pub const IP_FORWARD: &str = "net.ipv4.ip_forward";

/// `net.ipv6.conf.all.forwarding`.
pub const IPV6_FORWARD: &str = "net.ipv6.conf.all.forwarding";

/// `net.ipv4.conf.<link>.route_localnet`.
pub fn route_localnet(link: &str) -> String {
    format!("net.ipv4.conf.{link}.route_localnet")
}

/// `net.ipv6.conf.<link>.accept_ra`.
pub fn accept_ra(link: &str) -> String {
    format!("net.ipv6.conf.{link}.accept_ra")
}

/// `net.ipv6.conf.<link>.disable_ipv6` (`link` may be `all` or `default`).
pub fn disable_ipv6(link: &str) -> String {
    format!("net.ipv6.conf.{link}.disable_ipv6")
}

/// Whether the kernel has the key at all (IPv6 keys are absent when IPv6 is off at boot).
pub fn exists(key: &str) -> bool {
    path(key).exists()
}

fn path(key: &str) -> PathBuf {
    // Interface names cannot contain '/' or '.', so the dotted key maps to a path one to one.
    let mut path = PathBuf::from("/proc/sys");
    path.extend(key.split('.'));
    path
}

/// The current value, trimmed.
pub fn get(key: &str) -> Result<String, SysctlError> {
    std::fs::read_to_string(path(key))
        .map(|value| value.trim().to_owned())
        .map_err(|source| SysctlError::Read {
            key: key.to_owned(),
            source,
        })
}

/// Writes `value`, unless `key` already has it: where /proc/sys is read-only (an unprivileged
/// container, the chart's `node.privileged: false`) settings made on the node beforehand pass.
pub fn set(key: &str, value: &str) -> Result<(), SysctlError> {
    if get(key).is_ok_and(|current| current == value) {
        return Ok(());
    }
    std::fs::write(path(key), value).map_err(|source| SysctlError::Write {
        key: key.to_owned(),
        value: value.to_owned(),
        source,
    })
}

/// Whether `key` is `1` now (a missing key reads as not enabled).
pub fn is_enabled(key: &str) -> bool {
    get(key).is_ok_and(|value| value == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_proc_paths() {
        assert_eq!(
            path(&route_localnet("pier-0a1b2c3d")),
            PathBuf::from("/proc/sys/net/ipv4/conf/pier-0a1b2c3d/route_localnet")
        );
        assert_eq!(
            path(IP_FORWARD),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            path(IPV6_FORWARD),
            PathBuf::from("/proc/sys/net/ipv6/conf/all/forwarding")
        );
        assert_eq!(
            path(&accept_ra("pier-0a1b2c3d")),
            PathBuf::from("/proc/sys/net/ipv6/conf/pier-0a1b2c3d/accept_ra")
        );
        assert_eq!(
            path(&disable_ipv6("default")),
            PathBuf::from("/proc/sys/net/ipv6/conf/default/disable_ipv6")
        );
    }
}
