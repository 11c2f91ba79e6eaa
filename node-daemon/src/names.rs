//! The names and hashes of Pier's kernel objects: which link names Pier owns, and the one hash
//! behind a bridge's MAC and a veth's fingerprint. Pure string functions, shared by the dataplane
//! (which creates and deletes these links) and the kernel helpers (which must skip them).

use crate::state::{BRIDGE_PREFIX, HOST_VETH_PREFIX};

/// Whether a link name is a bridge Pier owns (`pier-` + 8 lowercase hex digits).
pub fn is_pier_bridge_name(name: &str) -> bool {
    name.strip_prefix(BRIDGE_PREFIX)
        .is_some_and(|rest| rest.len() == 8 && is_lower_hex(rest))
}

/// Whether a link name is a host-side veth Pier owns (`pv` + 10 lowercase hex digits).
pub fn is_pier_veth_name(name: &str) -> bool {
    name.strip_prefix(HOST_VETH_PREFIX)
        .is_some_and(|rest| rest.len() == 10 && is_lower_hex(rest))
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A stable, locally administered unicast MAC for a bridge, from its name (`02:` + FNV-1a).
pub fn bridge_mac(bridge: &str) -> [u8; 6] {
    let hash = fnv1a(bridge).to_be_bytes();
    [0x02, hash[0], hash[1], hash[2], hash[3], hash[4]]
}

/// 64-bit FNV-1a: stable across builds and platforms (unlike std's hasher).
pub fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `pier1 <16 hex>`: FNV-1a of the description.
pub fn fingerprint(description: &str) -> String {
    format!("pier1 {:016x}", fnv1a(description))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_patterns_are_strict() {
        assert!(is_pier_bridge_name("pier-0a1b2c3d"));
        assert!(!is_pier_bridge_name("pier-0a1b2c3"));
        assert!(!is_pier_bridge_name("pier-0A1B2C3D"));
        assert!(!is_pier_bridge_name("pier-br0"));
        assert!(is_pier_veth_name("pv0123456789"));
        assert!(!is_pier_veth_name("pvnet0"));
        assert!(!is_pier_veth_name("pv01234567890"));
    }

    #[test]
    fn bridge_macs_are_local_unicast_and_stable() {
        let mac = bridge_mac("pier-0a1b2c3d");
        assert_eq!(mac[0], 0x02);
        assert_eq!(mac, bridge_mac("pier-0a1b2c3d"));
        assert_ne!(mac, bridge_mac("pier-0a1b2c3e"));
    }

    #[test]
    fn fingerprints_are_stable() {
        assert_eq!(fingerprint("x"), fingerprint("x"));
        assert_ne!(fingerprint("x"), fingerprint("y"));
        assert!(fingerprint("x").starts_with("pier1 "));
    }
}
