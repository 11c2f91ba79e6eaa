//! Values the dataplane derives from names with the one hash of `pier_crds::names`: a bridge's
//! MAC and a veth's fingerprint.

use pier_crds::names::{BRIDGE_PREFIX, VXLAN_PREFIX, fnv1a64, is_pier_bridge_name};

/// A stable, locally administered unicast MAC for a bridge, from its name (`02:` + FNV-1a).
pub fn bridge_mac(bridge: &str) -> [u8; 6] {
    let hash = fnv1a64(bridge.as_bytes()).to_be_bytes();
    [0x02, hash[0], hash[1], hash[2], hash[3], hash[4]]
}

/// The VXLAN device of the overlay network whose bridge is `bridge` (both carry the same 8 hex
/// digits), if `bridge` is a Pier bridge's name.
pub fn vxlan_of_bridge(bridge: &str) -> Option<String> {
    let digits = bridge
        .strip_prefix(BRIDGE_PREFIX)
        .filter(|_| is_pier_bridge_name(bridge))?;
    Some(format!("{VXLAN_PREFIX}{digits}"))
}

/// `pier1 <16 hex>`: FNV-1a of the description.
pub fn fingerprint(description: &str) -> String {
    format!("pier1 {:016x}", fnv1a64(description.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_macs_are_local_unicast_and_stable() {
        let mac = bridge_mac("pier-0a1b2c3d");
        assert_eq!(mac[0], 0x02);
        assert_eq!(mac, bridge_mac("pier-0a1b2c3d"));
        assert_ne!(mac, bridge_mac("pier-0a1b2c3e"));
    }

    #[test]
    fn a_bridge_names_its_vxlan_device() {
        let uid = "0f4f8c1e-3b7a-4c5e-9d2a-1b2c3d4e5f60";
        let bridge = pier_crds::names::bridge_name(uid);
        assert_eq!(
            vxlan_of_bridge(&bridge),
            Some(pier_crds::names::vxlan_name(uid))
        );
        assert_eq!(vxlan_of_bridge("pv0123456789"), None);
        assert_eq!(vxlan_of_bridge("pier-xyz"), None);
    }

    #[test]
    fn fingerprints_are_stable() {
        // Pinned: a change would make every existing veth look stale and be re-made once.
        assert_eq!(fingerprint(""), "pier1 cbf29ce484222325");
        assert_ne!(fingerprint("x"), fingerprint("y"));
    }
}
