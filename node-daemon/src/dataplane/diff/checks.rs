//! Checks of an endpoint's configuration that do not depend on its driver.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::state::{Attachment, BridgeAttachment, EndpointState, Netns};

/// Whether `address` may be an endpoint's on `subnet` with gateway `gateway`.
pub fn check_address(address: Ipv4Addr, subnet: Ipv4Net, gateway: Ipv4Addr) -> Result<(), String> {
    if !subnet.contains(&address) {
        return Err(format!("address {address} is outside subnet {subnet}"));
    }
    if address == gateway {
        return Err(format!("address {address} is the network's gateway"));
    }
    if subnet.prefix_len() < 31 && (address == subnet.network() || address == subnet.broadcast()) {
        return Err(format!(
            "address {address} is the network or broadcast address of {subnet}"
        ));
    }
    Ok(())
}

/// Whether `address` may be an endpoint's on the IPv6 `subnet` with gateway `gateway`.
pub fn check_address6(address: Ipv6Addr, subnet: Ipv6Net, gateway: Ipv6Addr) -> Result<(), String> {
    if !subnet.contains(&address) {
        return Err(format!("address {address} is outside subnet {subnet}"));
    }
    if address == gateway {
        return Err(format!("address {address} is the network's gateway"));
    }
    // IPv6 has no broadcast address; the all-zeros host is the subnet-router anycast address
    // (RFC 4291), which routers answer, except on /127 and /128 links (RFC 6164).
    if subnet.prefix_len() < 127 && address == subnet.network() {
        return Err(format!(
            "address {address} is the subnet-router anycast address of {subnet}"
        ));
    }
    Ok(())
}

pub fn valid_interface_name(name: &str) -> bool {
    // IFNAMSIZ is 16 including the NUL; '/' and whitespace are rejected by the kernel, and `lo`
    // would collide with the namespace's loopback.
    !name.is_empty()
        && name.len() < 16
        && name != "lo"
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// The first endpoint among `endpoints` with a bridge attachment matching `matches`, by id.
pub fn earlier(
    endpoints: &[EndpointState],
    matches: impl Fn(&BridgeAttachment, &Netns) -> bool,
) -> Option<&str> {
    endpoints.iter().find_map(|e| match &e.attachment {
        Attachment::Bridge(b) if matches(b, &e.netns) => Some(e.id.as_str()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked_against_the_subnet() {
        let subnet: Ipv4Net = "172.18.0.0/16".parse().expect("subnet");
        let gateway = Ipv4Addr::new(172, 18, 0, 1);
        assert!(check_address(Ipv4Addr::new(172, 18, 0, 2), subnet, gateway).is_ok());
        assert!(check_address(gateway, subnet, gateway).is_err());
        assert!(check_address(Ipv4Addr::new(172, 19, 0, 2), subnet, gateway).is_err());
        assert!(check_address(Ipv4Addr::new(172, 18, 255, 255), subnet, gateway).is_err());
    }

    #[test]
    fn ipv6_addresses_are_checked_against_the_subnet() {
        let subnet: Ipv6Net = "fd12:3456:789a:1::/64".parse().expect("subnet");
        let gateway: Ipv6Addr = "fd12:3456:789a:1::1".parse().expect("gateway");
        let ok: Ipv6Addr = "fd12:3456:789a:1::2".parse().expect("address");
        assert!(check_address6(ok, subnet, gateway).is_ok());
        assert!(check_address6(gateway, subnet, gateway).is_err());
        let outside: Ipv6Addr = "fd12:3456:789a:2::2".parse().expect("address");
        assert!(check_address6(outside, subnet, gateway).is_err());
        let anycast = subnet.network();
        let message = check_address6(anycast, subnet, gateway).expect_err("anycast");
        assert!(message.contains("anycast"), "{message}");
    }

    #[test]
    fn interface_names_fit_the_kernel() {
        assert!(valid_interface_name("eth0"));
        assert!(!valid_interface_name("lo"));
        assert!(!valid_interface_name("a-very-long-name0"));
        assert!(!valid_interface_name("a/b"));
    }
}
