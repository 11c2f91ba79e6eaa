//! The names of the kernel objects Pier owns and the one hash behind them.
//!
//! The operator records names in status and the node daemon creates and recognizes the objects,
//! so both take them from here and can never disagree. Changing a formula would orphan every
//! object on every node: the tests pin them.

/// Where named network namespaces live (`ip netns add NAME` creates `NETNS_DIR/NAME`).
pub const NETNS_DIR: &str = "/var/run/netns";

/// Prefix of the Linux bridges Pier owns: `pier-` + 8 lowercase hex digits.
pub const BRIDGE_PREFIX: &str = "pier-";
/// Prefix of the host-side veths Pier owns: `pv` + 10 lowercase hex digits.
pub const HOST_VETH_PREFIX: &str = "pv";

/// Prefix of the VXLAN devices Pier owns: `pvx` + the 8 hex digits of the network's bridge.
pub const VXLAN_PREFIX: &str = "pvx";

/// The link group (`IFLA_GROUP`, `ip link set NAME group N`) Pier moves its own links into just
/// before deleting them all with one request (`ip link delete group N`): the kernel then removes
/// them in one batch, paying its grace periods once instead of once per link. Pier never leaves
/// a link there and never deletes the group while a link it does not own is in it. The number
/// spells `pier` in ASCII, far from the small numbers administrators give groups in
/// `/etc/iproute2/group`.
pub const REMOVAL_LINK_GROUP: u32 = 0x7069_6572;

/// The Node annotation where a node agent records its tunnel address (the underlay address
/// other nodes send an overlay's VXLAN packets to). On the Node because the Node's lifetime is
/// the node's: a Node deleted from the cluster takes its address, and so every entry pointing
/// at it, with it; every agent already may read Nodes.
pub const TUNNEL_ADDRESS_ANNOTATION: &str = "pier.dev/tunnel-address";
/// The Node annotation where a node agent records the MTU of its underlay interface (the
/// operator derives an overlay's MTU from the smallest).
pub const UNDERLAY_MTU_ANNOTATION: &str = "pier.dev/underlay-mtu";

/// FNV-1a, 64 bits: stable across builds and platforms (unlike std's hasher), no dependency.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// FNV-1a, 32 bits (for fingerprints stored in 8 hex digits).
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash, byte| {
        (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193)
    })
}

/// The Linux bridge of the Network with this uid: `pier-` + the low 32 bits of the uid's hash
/// (IFNAMSIZ leaves room for 8 hex digits after the prefix). A re-created Network gets a new
/// uid and so a new bridge.
pub fn bridge_name(uid: &str) -> String {
    format!("{BRIDGE_PREFIX}{:08x}", fnv1a64(uid.as_bytes()) as u32)
}

/// The VXLAN device of the overlay Network with this uid: `pvx` + the same 8 hex digits as its
/// bridge.
pub fn vxlan_name(uid: &str) -> String {
    format!("{VXLAN_PREFIX}{:08x}", fnv1a64(uid.as_bytes()) as u32)
}

/// Whether a link name is a VXLAN device Pier owns (the prefix and exactly 8 lowercase hex
/// digits).
pub fn is_pier_vxlan_name(name: &str) -> bool {
    name.strip_prefix(VXLAN_PREFIX)
        .is_some_and(|rest| rest.len() == 8 && is_lower_hex(rest))
}

/// The host-side veth of the Endpoint with this uid: `pv` + the low 40 bits of the uid's hash.
pub fn host_veth_name(uid: &str) -> String {
    format!(
        "{HOST_VETH_PREFIX}{:010x}",
        fnv1a64(uid.as_bytes()) & 0xff_ffff_ffff
    )
}

/// Whether a link name is a bridge Pier owns (the prefix and exactly 8 lowercase hex digits).
pub fn is_pier_bridge_name(name: &str) -> bool {
    name.strip_prefix(BRIDGE_PREFIX)
        .is_some_and(|rest| rest.len() == 8 && is_lower_hex(rest))
}

/// Whether a link name is a host-side veth Pier owns (the prefix and exactly 10 lowercase hex
/// digits).
pub fn is_pier_veth_name(name: &str) -> bool {
    name.strip_prefix(HOST_VETH_PREFIX)
        .is_some_and(|rest| rest.len() == 10 && is_lower_hex(rest))
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_pinned() {
        // Changing these would orphan every bridge and veth on every node.
        assert_eq!(bridge_name(""), "pier-84222325");
        assert_eq!(host_veth_name(""), "pve484222325");
        let uid = "0f4f8c1e-3b7a-4c5e-9d2a-1b2c3d4e5f60";
        assert_eq!(bridge_name(uid).len(), 13);
        assert_eq!(host_veth_name(uid).len(), 12);
        assert!(is_pier_bridge_name(&bridge_name(uid)));
        assert!(is_pier_veth_name(&host_veth_name(uid)));
        assert_eq!(vxlan_name(""), "pvx84222325");
        assert!(is_pier_vxlan_name(&vxlan_name(uid)));
        assert!(!is_pier_veth_name(&vxlan_name(uid)));
        assert!(!is_pier_vxlan_name("pvxlan0"));
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(REMOVAL_LINK_GROUP.to_be_bytes(), *b"pier");
    }

    #[test]
    fn ownership_patterns_are_strict() {
        assert!(is_pier_bridge_name("pier-0a1b2c3d"));
        for foreign in [
            "pier-0A1B2C3D",
            "pier-0a1b2c3",
            "pier-0a1b2c3d4",
            "pier-xyz12345",
            "pier-br0",
            "docker0",
        ] {
            assert!(!is_pier_bridge_name(foreign), "{foreign}");
        }
        assert!(is_pier_veth_name("pv0123456789"));
        for foreign in [
            "pv012345678",
            "pvnet0",
            "pv0123456789a",
            "pvABCDEF0123",
            "veth0123456",
        ] {
            assert!(!is_pier_veth_name(foreign), "{foreign}");
        }
    }
}
