//! Values the dataplane derives from names with the one hash of `pier_crds::names`: a bridge's
//! MAC and a veth's fingerprint.

use pier_crds::names::fnv1a64;

/// A stable, locally administered unicast MAC for a bridge, from its name (`02:` + FNV-1a).
pub fn bridge_mac(bridge: &str) -> [u8; 6] {
    let hash = fnv1a64(bridge.as_bytes()).to_be_bytes();
    [0x02, hash[0], hash[1], hash[2], hash[3], hash[4]]
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
    fn fingerprints_are_stable() {
        // Pinned: a change would make every existing veth look stale and be re-made once.
        assert_eq!(fingerprint(""), "pier1 cbf29ce484222325");
        assert_ne!(fingerprint("x"), fingerprint("y"));
    }
}
