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
//!
//! Nothing else is changed; nothing is reverted on reset (other software may rely on forwarding).
//!
//! Plans do not read these files: both values come back with the link dump (`IFLA_AF_SPEC`, the
//! IPv4 settings of `lo` and of each bridge), so a plan needs no thread in the host namespace.
//! Only a write (rare: a new bridge, or a value changed by hand) goes through here.

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

/// `net.ipv4.conf.<link>.route_localnet`.
pub fn route_localnet(link: &str) -> String {
    format!("net.ipv4.conf.{link}.route_localnet")
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

/// Writes `value`.
pub fn set(key: &str, value: &str) -> Result<(), SysctlError> {
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
    }
}
