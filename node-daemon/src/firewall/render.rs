//! The desired contents of table `inet pier`, computed from a `NodeState` without touching the
//! kernel.
//!
//! Design: the rules are a constant. Everything that depends on the state (bridges, subnets,
//! published ports) lives in named sets and maps, so a change of state is a change of set
//! elements: adding one port to a node with 1000 published ports is one map element, and the
//! per-packet cost is one hash lookup whatever the number of ports or networks.
//!
//! Published ports use two maps, because a single map keyed by (daddr . l4proto . dport) cannot
//! express "any local address" for `hostIP: 0.0.0.0` without one element per local address (and
//! the node's addresses change under us, e.g. DHCP):
//! - `ports_addr`, keyed (daddr . l4proto . dport), for ports bound to one address;
//! - `ports_any`, keyed (l4proto . dport), for `0.0.0.0`, consulted only for packets whose
//!   destination is an address of this node (`fib daddr type local`), so a forwarded packet to
//!   some other machine's port 80 is never captured.
//!
//! The specific map is consulted first, so `127.0.0.1:8000` and `0.0.0.0:8000` may coexist with
//! the specific binding winning, as a socket bound to one address would over a wildcard one.
//!
//! IPv6 has the same pair, `ports_addr6` and `ports_any6` (`::`), and its own masquerade set; the
//! forward rules match interface names and conntrack only, so isolation, internal networks and
//! "only published ports from outside" hold for both families with the same rules.
//!
//! One thing IPv6 cannot do in this table: `[::1]:hostPort` from the node. IPv4 has
//! `route_localnet`; IPv6 has no such switch, and the kernel refuses a packet to `::1` that
//! arrives on any interface but `lo`. The node's connection is DNATed and its `::1` source
//! masqueraded like `127.0.0.1`'s, but the endpoint's answer, once conntrack has turned its
//! destination back into `::1` (in `prerouting`, or already on the bridge where br_netfilter is
//! active), is dropped: by the route lookup (`::1` routes only from `lo`) or by the IPv6 input
//! checks of the bridge. Table `ip6 pier` (see [`LOOPBACK6_RULES`]) takes those answers there,
//! gives them back the source the client connected to (the published address and port: on the
//! way in, conntrack would only do that after the route lookup that drops them), and hands a
//! copy to `lo` with `dup`, which the kernel has for `ip6` tables but not for `inet` ones. The
//! copy arrives on `lo` as any local packet to `::1` does. No userland proxy is involved.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use pier_crds::network::VXLAN_PORT;

use crate::state::{Driver, NetworkState, NodeState, Protocol, PublishedPort};

pub use loopback6::{LOOPBACK6_CHAIN, LOOPBACK6_PRIORITY, LOOPBACK6_RULES};

use super::expr::{
    CT_STATE_ESTABLISHED, CT_STATE_RELATED, CmpOp, Expr, IPS_DST_NAT, MetaKey, PayloadBase, REG_1,
    REG32_00, REG32_01, REG32_04, RTN_LOCAL, Register, Verdict,
};

/// The name of the tables Pier owns: `inet pier`, and `ip6 pier` on a node with IPv6 networks.
/// Nothing outside them is changed but Pier's tagged accepts in other firewalls' chains.
pub const TABLE: &str = "pier";

/// Names of the sets and maps.
pub const SET_BRIDGES: &str = "bridges";
pub const SET_BRIDGE_PAIRS: &str = "bridge_pairs";
pub const SET_INTERNAL: &str = "internal_bridges";
/// Bridges of other container engines and hypervisors on the node (docker0, br-…, virbr0): not
/// Pier's, and carrying no default route (a bridge that does is the node's uplink).
pub const SET_HOST_BRIDGES: &str = "host_bridges";
pub const SET_MASQ: &str = "masq_subnets";
pub const SET_MASQ6: &str = "masq_subnets6";
/// The VXLAN ids of this node's overlay networks, and which tunnel address may send to which:
/// (VXLAN id . the tunnel address of a node with an endpoint of that network).
pub const SET_OVERLAY_IDS: &str = "overlay_ids";
pub const SET_OVERLAY_PEERS: &str = "overlay_peers";
pub const MAP_PORTS_ADDR: &str = "ports_addr";
pub const MAP_PORTS_ANY: &str = "ports_any";
pub const MAP_PORTS_ADDR6: &str = "ports_addr6";
pub const MAP_PORTS_ANY6: &str = "ports_any6";

/// Linux's `IFNAMSIZ`: interface names in set keys are this long, NUL-padded.
const IFNAMSIZ: usize = 16;

/// The datatype of one field of a set key or map value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Ipv4,
    Ipv6,
    /// A 24-bit VXLAN id, as it stands in the VXLAN header.
    VxlanId,
    InetProto,
    InetService,
    IfName,
}

impl Field {
    /// nft's datatype number (`enum datatypes` in nftables' datatype.h). The kernel stores it
    /// without looking at it; `nft list` uses it to print elements readably.
    fn nft_type(self) -> u32 {
        match self {
            Field::Ipv4 => 7,
            Field::Ipv6 => 8,
            // nft's `integer`: a raw payload (`@th,96,24`) has no datatype of its own.
            Field::VxlanId => 4,
            Field::InetProto => 12,
            Field::InetService => 13,
            Field::IfName => 41,
        }
    }

    /// Bytes of the value itself.
    fn len(self) -> usize {
        match self {
            Field::Ipv4 => 4,
            Field::Ipv6 => 16,
            Field::VxlanId => 3,
            Field::InetProto => 1,
            Field::InetService => 2,
            Field::IfName => IFNAMSIZ,
        }
    }

    /// Bytes the field takes in a concatenation: every field starts on a 4-byte register.
    fn slot_len(self) -> usize {
        self.len().div_ceil(4) * 4
    }

    fn show(self, bytes: &[u8]) -> String {
        match (self, bytes) {
            (Field::Ipv4, [a, b, c, d]) => Ipv4Addr::new(*a, *b, *c, *d).to_string(),
            (Field::Ipv6, bytes) if bytes.len() == 16 => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(bytes);
                Ipv6Addr::from(octets).to_string()
            }
            (Field::VxlanId, [a, b, c]) => u32::from_be_bytes([0, *a, *b, *c]).to_string(),
            (Field::InetProto, [p]) => match *p {
                6 => "tcp".into(),
                17 => "udp".into(),
                132 => "sctp".into(),
                other => other.to_string(),
            },
            (Field::InetService, [hi, lo]) => u16::from_be_bytes([*hi, *lo]).to_string(),
            (Field::IfName, name) => {
                let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
                format!("\"{}\"", String::from_utf8_lossy(&name[..end]))
            }
            (_, other) => format!("0x{}", hex(other)),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// nft's number for a concatenation: the fields' numbers, 6 bits each (`TYPE_BITS`).
fn concat_type(fields: &[Field]) -> u32 {
    fields.iter().fold(0, |acc, f| (acc << 6) | f.nft_type())
}

fn concat_len(fields: &[Field]) -> u32 {
    let len: usize = if let [single] = fields {
        single.len()
    } else {
        fields.iter().map(|f| f.slot_len()).sum()
    };
    // At most 4 fields of at most 16 bytes: always fits.
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Encodes one value per field into the kernel's concatenation layout.
fn concat(fields: &[Field], values: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for (field, value) in fields.iter().zip(values) {
        let mut slot = value.to_vec();
        let width = if fields.len() == 1 {
            field.len()
        } else {
            field.slot_len()
        };
        slot.resize(width, 0);
        out.extend_from_slice(&slot);
    }
    out
}

fn split<'a>(fields: &[Field], bytes: &'a [u8]) -> Vec<&'a [u8]> {
    let mut parts = Vec::new();
    let mut rest = bytes;
    for field in fields {
        let width = if fields.len() == 1 {
            field.len()
        } else {
            field.slot_len()
        };
        let (slot, tail) = rest.split_at(width.min(rest.len()));
        parts.push(&slot[..field.len().min(slot.len())]);
        rest = tail;
    }
    parts
}

fn ifname(name: &str) -> [u8; IFNAMSIZ] {
    let mut out = [0u8; IFNAMSIZ];
    // Names longer than IFNAMSIZ-1 cannot exist in the kernel; truncating keeps this total.
    for (slot, byte) in out.iter_mut().zip(name.bytes().take(IFNAMSIZ - 1)) {
        *slot = byte;
    }
    out
}

/// The interface name in a NUL-padded set key.
pub fn ifname_of(key: &[u8]) -> String {
    let end = key.iter().position(|b| *b == 0).unwrap_or(key.len());
    String::from_utf8_lossy(&key[..end]).into_owned()
}

fn l4proto(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

/// One set or map element as the kernel stores it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Element {
    pub key: Vec<u8>,
    /// In an interval set, the first address after a range (`NFT_SET_ELEM_INTERVAL_END`).
    pub interval_end: bool,
    /// The value, for maps.
    pub data: Option<Vec<u8>>,
}

/// One named set or map of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec {
    pub name: &'static str,
    pub key: &'static [Field],
    /// Empty for a set, the value's fields for a map.
    pub data: &'static [Field],
    /// Elements are ranges (start, end+1) rather than single keys.
    pub interval: bool,
    pub elements: BTreeSet<Element>,
}

/// `NFT_SET_INTERVAL`, `NFT_SET_MAP`.
const NFT_SET_INTERVAL: u32 = 0x4;
const NFT_SET_MAP: u32 = 0x8;

impl SetSpec {
    fn new(name: &'static str, key: &'static [Field], data: &'static [Field]) -> Self {
        SetSpec {
            name,
            key,
            data,
            interval: false,
            elements: BTreeSet::new(),
        }
    }

    /// The kernel's set flags.
    pub fn flags(&self) -> u32 {
        let mut flags = 0;
        if self.interval {
            flags |= NFT_SET_INTERVAL;
        }
        if !self.data.is_empty() {
            flags |= NFT_SET_MAP;
        }
        flags
    }

    pub fn key_type(&self) -> u32 {
        concat_type(self.key)
    }

    pub fn key_len(&self) -> u32 {
        concat_len(self.key)
    }

    /// The value's type and length, for maps.
    pub fn data_type_len(&self) -> Option<(u32, u32)> {
        (!self.data.is_empty()).then(|| (concat_type(self.data), concat_len(self.data)))
    }

    /// The set's user data, in nft's type-length-value format: the key's byte order for a
    /// single-field key, without which `nft list` prints interface names backwards (empty).
    /// The kernel stores it without using it.
    pub fn userdata(&self) -> Vec<u8> {
        // NFTNL_UDATA_SET_KEYBYTEORDER; nft's BYTEORDER_HOST_ENDIAN = 1, BYTEORDER_BIG_ENDIAN = 2.
        let order: u32 = match self.key {
            [Field::IfName] => 1,
            [_] => 2,
            _ => return Vec::new(),
        };
        let mut out = vec![0, 4];
        out.extend_from_slice(&order.to_ne_bytes());
        out
    }

    /// An element in nft's notation, e.g. `172.18.0.1 . tcp . 8000 : 172.18.0.2 . 80`.
    pub fn show(&self, element: &Element) -> String {
        let fields = |fields: &[Field], bytes: &[u8]| {
            fields
                .iter()
                .zip(split(fields, bytes))
                .map(|(f, b)| f.show(b))
                .collect::<Vec<_>>()
                .join(" . ")
        };
        let mut out = fields(self.key, &element.key);
        if self.interval {
            out.push_str(if element.interval_end {
                " (range end)"
            } else {
                " (range start)"
            });
        }
        if let Some(data) = &element.data {
            out.push_str(" : ");
            out.push_str(&fields(self.data, data));
        }
        out
    }

    fn type_text(&self) -> String {
        let names = |fields: &[Field]| {
            fields
                .iter()
                .map(|f| match f {
                    Field::Ipv4 => "ipv4_addr",
                    Field::Ipv6 => "ipv6_addr",
                    Field::VxlanId => "integer",
                    Field::InetProto => "inet_proto",
                    Field::InetService => "inet_service",
                    Field::IfName => "ifname",
                })
                .collect::<Vec<_>>()
                .join(" . ")
        };
        if self.data.is_empty() {
            names(self.key)
        } else {
            format!("{} : {}", names(self.key), names(self.data))
        }
    }
}

/// The kind of a base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainKind {
    Filter,
    Nat,
}

impl ChainKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChainKind::Filter => "filter",
            ChainKind::Nat => "nat",
        }
    }
}

/// The netfilter hook of a base chain (`enum nf_inet_hooks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting = 0,
    Input = 1,
    Forward = 2,
    Output = 3,
    Postrouting = 4,
}

impl Hook {
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        }
    }
}

/// One rule: its bytecode and what `nft list` prints for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    /// A short, stable name for the rule's purpose.
    pub id: &'static str,
    /// The rule in nft syntax, as `nft list table inet pier` prints it (tests compare the two;
    /// nft leaves out the `meta nfproto ipv4` that an `ip ...` match implies in an inet table).
    pub text: &'static str,
    pub exprs: Vec<Expr>,
}

impl RuleSpec {
    /// The comment stored with the rule in the kernel. It carries a hash of the bytecode, so
    /// reading the comments back tells whether the kernel runs exactly these rules (a newer Pier
    /// with different rules, or a hand-edited rule, shows up as a mismatch and is replaced).
    pub fn comment(&self) -> String {
        let fingerprint = format!("{}|{:?}", self.text, self.exprs);
        format!(
            "pier:{}:{:08x}",
            self.id,
            pier_crds::names::fnv1a32(fingerprint.as_bytes())
        )
    }
}

/// One base chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSpec {
    pub name: &'static str,
    pub kind: ChainKind,
    pub hook: Hook,
    pub priority: i32,
    pub rules: Vec<RuleSpec>,
}

/// The whole desired table `inet pier`, and table `ip6 pier` when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub sets: Vec<SetSpec>,
    pub chains: Vec<ChainSpec>,
    /// The one chain of table `ip6 pier` (`[::1]:hostPort`, see the module docs): only on a node
    /// with an IPv6 network, so a node without IPv6 needs no `dup` support in its kernel.
    pub loopback6: Option<ChainSpec>,
}

impl Ruleset {
    /// The set or map with this name.
    pub fn set(&self, name: &str) -> Option<&SetSpec> {
        self.sets.iter().find(|s| s.name == name)
    }
}

/// Computes the desired table from the node's state, with no bridges of other engines and every
/// overlay's VXLAN device in place. Pure.
pub fn render(state: &NodeState) -> Ruleset {
    render_with(state, &[], None)
}

/// Computes the desired table from the node's state, the names of the other engines' bridges on
/// the node (see [`SET_HOST_BRIDGES`]) and the VXLAN ids whose Pier device exists on the node
/// (`None`: every overlay's; see [`SET_OVERLAY_IDS`]). Pure: no kernel access.
pub fn render_with(
    state: &NodeState,
    host_bridges: &[String],
    vxlan_devices: Option<&BTreeSet<u32>>,
) -> Ruleset {
    let bridges: Vec<&NetworkState> = state
        .networks
        .iter()
        .filter(|n| n.driver.has_bridge())
        .collect();
    let [set_bridges, set_pairs, set_internal] = bridge_sets(&bridges);
    let [set_masq, set_masq6] = masquerade_sets(&bridges);
    let [map_addr, map_any, map_addr6, map_any6] = port_maps(state, &bridges);
    Ruleset {
        sets: vec![
            set_bridges,
            set_pairs,
            set_internal,
            host_bridges_set(host_bridges),
            set_masq,
            set_masq6,
            map_addr,
            map_any,
            map_addr6,
            map_any6,
        ]
        .into_iter()
        .chain(overlay_sets(state, vxlan_devices))
        .collect(),
        chains: chains(),
        loopback6: bridges
            .iter()
            .any(|n| n.subnet6.is_some())
            .then(loopback6::chain),
    }
}

/// Pier's bridges, each bridge paired with itself, and the internal networks' bridges.
fn bridge_sets(bridges: &[&NetworkState]) -> [SetSpec; 3] {
    let mut set_bridges = SetSpec::new(SET_BRIDGES, &[Field::IfName], &[]);
    let mut set_pairs = SetSpec::new(SET_BRIDGE_PAIRS, &[Field::IfName, Field::IfName], &[]);
    let mut set_internal = SetSpec::new(SET_INTERNAL, &[Field::IfName], &[]);
    for network in bridges {
        let name = ifname(&network.bridge_name());
        let element = |key: Vec<u8>| Element {
            key,
            interval_end: false,
            data: None,
        };
        set_bridges.elements.insert(element(name.to_vec()));
        set_pairs
            .elements
            .insert(element(concat(set_pairs.key, &[&name, &name])));
        if network.internal {
            set_internal.elements.insert(element(name.to_vec()));
        }
    }
    [set_bridges, set_pairs, set_internal]
}

/// The other engines' bridges (see [`SET_HOST_BRIDGES`]).
fn host_bridges_set(host_bridges: &[String]) -> SetSpec {
    let mut set_host_bridges = SetSpec::new(SET_HOST_BRIDGES, &[Field::IfName], &[]);
    for name in host_bridges {
        set_host_bridges.elements.insert(Element {
            key: ifname(name).to_vec(),
            interval_end: false,
            data: None,
        });
    }
    set_host_bridges
}

/// The subnets masqueraded on the way out, IPv4 and IPv6: the non-internal bridge networks',
/// merged.
fn masquerade_sets(bridges: &[&NetworkState]) -> [SetSpec; 2] {
    let masqueraded = || bridges.iter().filter(|n| !n.internal);
    let v4 = masqueraded()
        .filter_map(|n| n.subnet)
        .map(|s| (u32::from(s.network()), u32::from(s.broadcast())))
        .collect();
    let v6 = masqueraded()
        .filter_map(|n| n.subnet6)
        .map(|s| (u128::from(s.network()), u128::from(s.broadcast())))
        .collect();
    [
        interval_set(SET_MASQ, &[Field::Ipv4], merge_ranges(v4)),
        interval_set(SET_MASQ6, &[Field::Ipv6], merge_ranges(v6)),
    ]
}

/// An interval set of addresses holding `ranges` (inclusive, merged).
fn interval_set<T: Address>(
    name: &'static str,
    key: &'static [Field],
    ranges: Vec<(T, T)>,
) -> SetSpec {
    let mut set = SetSpec::new(name, key, &[]);
    set.interval = true;
    for (start, end) in ranges {
        set.elements.insert(Element {
            key: start.be_bytes(),
            interval_end: false,
            data: None,
        });
        // A range that reaches the last address has no "first address after it".
        if let Some(after) = end.successor() {
            set.elements.insert(Element {
                key: after.be_bytes(),
                interval_end: true,
                data: None,
            });
        }
    }
    set
}

/// An address as a number, so ranges of either family merge the same way.
trait Address: Copy + Ord {
    fn successor(self) -> Option<Self>;
    fn be_bytes(self) -> Vec<u8>;
}

impl Address for u32 {
    fn successor(self) -> Option<Self> {
        self.checked_add(1)
    }

    fn be_bytes(self) -> Vec<u8> {
        self.to_be_bytes().to_vec()
    }
}

impl Address for u128 {
    fn successor(self) -> Option<Self> {
        self.checked_add(1)
    }

    fn be_bytes(self) -> Vec<u8> {
        self.to_be_bytes().to_vec()
    }
}

/// The VXLAN ids of the state's overlay networks whose device exists here, and (id . tunnel
/// address) of every node with an endpoint of one of them (see the rule `overlay-peers-only`).
/// A VXLAN id without Pier's device may be another program's (Calico's and Docker Swarm's
/// overlays use 4096 on the same port too, and then Pier's device cannot be made): its packets
/// are not Pier's to judge.
fn overlay_sets(state: &NodeState, vxlan_devices: Option<&BTreeSet<u32>>) -> [SetSpec; 2] {
    let mut ids = SetSpec::new(SET_OVERLAY_IDS, &[Field::VxlanId], &[]);
    let mut peers = SetSpec::new(SET_OVERLAY_PEERS, &[Field::VxlanId, Field::Ipv4], &[]);
    let element = |key: Vec<u8>| Element {
        key,
        interval_end: false,
        data: None,
    };
    let overlays: BTreeMap<&str, [u8; 3]> = state
        .networks
        .iter()
        .filter(|n| n.driver == Driver::Overlay)
        .filter_map(|n| Some((n.name.as_str(), n.vxlan_id?)))
        .filter(|(_, id)| vxlan_devices.is_none_or(|made| made.contains(id)))
        .map(|(name, id)| (name, vxlan_id_bytes(id)))
        .collect();
    for id in overlays.values() {
        ids.elements.insert(element(id.to_vec()));
    }
    for remote in &state.remote_endpoints {
        if let Some(id) = overlays.get(remote.network.as_str()) {
            let key = concat(peers.key, &[id, &remote.tunnel.octets()]);
            peers.elements.insert(element(key));
        }
    }
    [ids, peers]
}

/// A VXLAN id as the header carries it: 24 bits, network byte order.
fn vxlan_id_bytes(id: u32) -> [u8; 3] {
    let [_, a, b, c] = id.to_be_bytes();
    [a, b, c]
}

/// The published ports by host address and port, and by port alone (host address unspecified):
/// `ports_addr`, `ports_any`, `ports_addr6`, `ports_any6`.
fn port_maps(state: &NodeState, bridges: &[&NetworkState]) -> [SetSpec; 4] {
    // Internal networks have no published ports (docker --internal): their ports are left out.
    let internal = || bridges.iter().filter(|n| n.internal);
    let internal4: Vec<_> = internal().filter_map(|n| n.subnet).collect();
    let internal6: Vec<_> = internal().filter_map(|n| n.subnet6).collect();
    let mut v4 = FamilyPorts::new(MAP_PORTS_ADDR, MAP_PORTS_ANY, Ip::V4);
    let mut v6 = FamilyPorts::new(MAP_PORTS_ADDR6, MAP_PORTS_ANY6, Ip::V6);
    for port in &state.ports {
        match (port.host_ip, port.endpoint_address) {
            (IpAddr::V4(host), IpAddr::V4(to)) if !internal4.iter().any(|s| s.contains(&to)) => {
                let host = (!host.is_unspecified()).then(|| host.octets());
                v4.insert(host.as_ref().map(|h| &h[..]), &to.octets(), port);
            }
            (IpAddr::V6(host), IpAddr::V6(to)) if !internal6.iter().any(|s| s.contains(&to)) => {
                let host = (!host.is_unspecified()).then(|| host.octets());
                v6.insert(host.as_ref().map(|h| &h[..]), &to.octets(), port);
            }
            // An internal network's port, or an entry mixing families (one entry is one family:
            // there is no DNAT from one family to the other).
            _ => {}
        }
    }
    let [addr, any] = v4.finish();
    let [addr6, any6] = v6.finish();
    [addr, any, addr6, any6]
}

/// The key of a map of ports on one address, (address . l4proto . port), and the value of both
/// maps of a family, (address . port).
fn port_map_fields(ip: Ip) -> (&'static [Field], &'static [Field]) {
    match ip {
        Ip::V4 => (
            &[Field::Ipv4, Field::InetProto, Field::InetService],
            &[Field::Ipv4, Field::InetService],
        ),
        Ip::V6 => (
            &[Field::Ipv6, Field::InetProto, Field::InetService],
            &[Field::Ipv6, Field::InetService],
        ),
    }
}

/// The two port maps of one family being filled.
struct FamilyPorts {
    by_addr: SetSpec,
    by_any: SetSpec,
    addr: BTreeMap<Vec<u8>, Element>,
    any: BTreeMap<Vec<u8>, Element>,
}

impl FamilyPorts {
    fn new(by_addr: &'static str, by_any: &'static str, ip: Ip) -> FamilyPorts {
        let (key, data) = port_map_fields(ip);
        FamilyPorts {
            by_addr: SetSpec::new(by_addr, key, data),
            by_any: SetSpec::new(by_any, &[Field::InetProto, Field::InetService], data),
            addr: BTreeMap::new(),
            any: BTreeMap::new(),
        }
    }

    /// One port: on `host` (an address of this family), or on every address (`None`), to
    /// `to` (the endpoint's address).
    fn insert(&mut self, host: Option<&[u8]>, to: &[u8], port: &PublishedPort) {
        let proto = [l4proto(port.protocol)];
        let host_port = port.host_port.to_be_bytes();
        let data = concat(self.by_addr.data, &[to, &port.container_port.to_be_bytes()]);
        let (key, target) = match host {
            None => (
                concat(self.by_any.key, &[&proto, &host_port]),
                &mut self.any,
            ),
            Some(host) => (
                concat(self.by_addr.key, &[host, &proto, &host_port]),
                &mut self.addr,
            ),
        };
        // Two ports with the same key would be rejected by the kernel as a whole batch; the
        // operator never allocates such a pair, and if it did, the first one wins here.
        target.entry(key.clone()).or_insert(Element {
            key,
            interval_end: false,
            data: Some(data),
        });
    }

    fn finish(mut self) -> [SetSpec; 2] {
        self.by_addr.elements = self.addr.into_values().collect();
        self.by_any.elements = self.any.into_values().collect();
        [self.by_addr, self.by_any]
    }
}

/// Merges overlapping and adjacent inclusive ranges. The kernel's interval sets reject
/// overlapping ranges, and adjacent /16s are the normal case (172.17/16, 172.18/16, ...), so the
/// set holds their union.
fn merge_ranges<T: Address>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut merged: Vec<(T, T)> = Vec::new();
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if last.1.successor().is_none_or(|next| start <= next) => {
                last.1 = last.1.max(end)
            }
            _ => merged.push((start, end)),
        }
    }
    merged
}

fn meta(key: MetaKey, dreg: u32) -> Expr {
    Expr::Meta { key, dreg }
}

fn lookup(set: &'static str, sreg: u32) -> Expr {
    Expr::Lookup {
        set,
        sreg,
        dreg: None,
        invert: false,
    }
}

fn lookup_not(set: &'static str, sreg: u32) -> Expr {
    Expr::Lookup {
        set,
        sreg,
        dreg: None,
        invert: true,
    }
}

/// The IP family of a rule or a map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ip {
    V4,
    V6,
}

impl Ip {
    /// `meta nfproto ipv4|ipv6`: the dependency of every header match in an `inet` table.
    fn nfproto(self) -> [Expr; 2] {
        match self {
            Ip::V4 => Expr::is_ipv4(),
            Ip::V6 => Expr::is_ipv6(),
        }
    }

    /// `ip saddr` / `ip6 saddr` into `REG_1`.
    fn saddr(self) -> Expr {
        let offset = match self {
            Ip::V4 => IP_SADDR_OFFSET,
            Ip::V6 => IP6_SADDR_OFFSET,
        };
        Expr::Payload {
            base: PayloadBase::Network,
            offset,
            len: self.address_len(),
            dreg: REG_1,
        }
    }

    /// The set of subnets masqueraded on the way out.
    fn masquerade_set(self) -> &'static str {
        match self {
            Ip::V4 => SET_MASQ,
            Ip::V6 => SET_MASQ6,
        }
    }

    /// The ports published on one address of this family, and on all of them.
    fn ports_by_address_map(self) -> &'static str {
        match self {
            Ip::V4 => MAP_PORTS_ADDR,
            Ip::V6 => MAP_PORTS_ADDR6,
        }
    }

    fn ports_any_address_map(self) -> &'static str {
        match self {
            Ip::V4 => MAP_PORTS_ANY,
            Ip::V6 => MAP_PORTS_ANY6,
        }
    }

    /// Bytes of an address.
    fn address_len(self) -> u32 {
        match self {
            Ip::V4 => 4,
            Ip::V6 => 16,
        }
    }

    /// 4-byte registers an address fills.
    fn address_registers(self) -> Register {
        self.address_len() / 4
    }

    /// Where the header keeps the destination address.
    fn daddr_offset(self) -> u32 {
        match self {
            Ip::V4 => IP_DADDR_OFFSET,
            Ip::V6 => IP6_DADDR_OFFSET,
        }
    }

    /// DNAT of this family to the address in `addr` and the port in `port`.
    fn dnat(self, addr: Register, port: Register) -> Expr {
        match self {
            Ip::V4 => Expr::Dnat { addr, port },
            Ip::V6 => Expr::Dnat6 { addr, port },
        }
    }
}

/// `REG_1 & mask == 0`: none of the bits of `mask` is set in the 4-byte value in `REG_1`.
fn none_of(mask: u32) -> [Expr; 2] {
    [
        Expr::Bitwise {
            sreg: REG_1,
            dreg: REG_1,
            mask: mask.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        },
        Expr::Cmp {
            op: CmpOp::Eq,
            sreg: REG_1,
            data: vec![0; 4],
        },
    ]
}

/// `ct state ! established,related ct status ! dnat`: a packet that starts a connection no
/// published port rewrote.
fn new_and_not_dnated() -> Vec<Expr> {
    let mut exprs = vec![Expr::CtState { dreg: REG_1 }];
    exprs.extend(none_of(CT_STATE_ESTABLISHED | CT_STATE_RELATED));
    exprs.push(Expr::CtStatus { dreg: REG_1 });
    exprs.extend(none_of(IPS_DST_NAT));
    exprs
}

/// Where an IPv4 header keeps its source and destination addresses.
const IP_SADDR_OFFSET: u32 = 12;
const IP_DADDR_OFFSET: u32 = 16;
/// Where an IPv6 header keeps them.
const IP6_SADDR_OFFSET: u32 = 8;
const IP6_DADDR_OFFSET: u32 = 24;

/// `ip saddr 127.0.0.0/8` (`offset` [`IP_SADDR_OFFSET`]) or `ip daddr 127.0.0.0/8`
/// ([`IP_DADDR_OFFSET`]), with its `meta nfproto ipv4`.
fn ip_addr_loopback(offset: u32) -> Vec<Expr> {
    let mut exprs = Expr::is_ipv4().to_vec();
    exprs.extend([
        Expr::Payload {
            base: PayloadBase::Network,
            offset,
            len: 4,
            dreg: REG_1,
        },
        Expr::Bitwise {
            sreg: REG_1,
            dreg: REG_1,
            mask: vec![255, 0, 0, 0],
            xor: vec![0; 4],
        },
        Expr::Cmp {
            op: CmpOp::Eq,
            sreg: REG_1,
            data: vec![127, 0, 0, 0],
        },
    ]);
    exprs
}

/// `KEY @set` (an interface name looked up in a set of them).
fn in_set(key: MetaKey, set: &'static str) -> [Expr; 2] {
    [meta(key, REG_1), lookup(set, REG_1)]
}

/// `KEY != @set`.
fn not_in_set(key: MetaKey, set: &'static str) -> [Expr; 2] {
    [meta(key, REG_1), lookup_not(set, REG_1)]
}

fn fib_daddr_local() -> [Expr; 2] {
    [
        Expr::FibDaddrType { dreg: REG_1 },
        Expr::Cmp {
            op: CmpOp::Eq,
            sreg: REG_1,
            data: RTN_LOCAL.to_ne_bytes().to_vec(),
        },
    ]
}

/// `dnat ip to ip daddr . meta l4proto . th dport map @ports_addr` (or its `ip6` twin): the key
/// (address . l4proto . dport) in REG32_00 on; the value (address . port) comes back in REG32_00
/// on, the port right after the address.
fn dnat_by_address(ip: Ip) -> Vec<Expr> {
    let address = ip.address_registers();
    let mut exprs = ip.nfproto().to_vec();
    exprs.extend([
        Expr::Payload {
            base: PayloadBase::Network,
            offset: ip.daddr_offset(),
            len: ip.address_len(),
            dreg: REG32_00,
        },
        meta(MetaKey::L4Proto, REG32_00 + address),
        Expr::Payload {
            base: PayloadBase::Transport,
            offset: 2,
            len: 2,
            dreg: REG32_00 + address + 1,
        },
        Expr::Lookup {
            set: ip.ports_by_address_map(),
            sreg: REG32_00,
            dreg: Some(REG32_00),
            invert: false,
        },
        ip.dnat(REG32_00, REG32_00 + address),
    ]);
    exprs
}

/// `meta nfproto ipv4 fib daddr type local dnat ip to meta l4proto . th dport map @ports_any`
/// (or its `ipv6` twin): the key (l4proto . dport) in REG32_00..01, the value as above.
fn dnat_any_address(ip: Ip) -> Vec<Expr> {
    let mut exprs = ip.nfproto().to_vec();
    exprs.extend(fib_daddr_local());
    exprs.extend([
        meta(MetaKey::L4Proto, REG32_00),
        Expr::Payload {
            base: PayloadBase::Transport,
            offset: 2,
            len: 2,
            dreg: REG32_01,
        },
        Expr::Lookup {
            set: ip.ports_any_address_map(),
            sreg: REG32_00,
            dreg: Some(REG32_00),
            invert: false,
        },
        ip.dnat(REG32_00, REG32_00 + ip.address_registers()),
    ]);
    exprs
}

fn dnat_rules() -> Vec<RuleSpec> {
    vec![
        // The specific map needs no `fib` guard: its key already names the destination address.
        RuleSpec {
            id: "dnat-addr",
            text: "dnat ip to ip daddr . meta l4proto . th dport map @ports_addr",
            exprs: dnat_by_address(Ip::V4),
        },
        RuleSpec {
            id: "dnat-any",
            text: "meta nfproto ipv4 fib daddr type local dnat ip to meta l4proto . th dport map @ports_any",
            exprs: dnat_any_address(Ip::V4),
        },
        RuleSpec {
            id: "dnat-addr6",
            text: "dnat ip6 to ip6 daddr . meta l4proto . th dport map @ports_addr6",
            exprs: dnat_by_address(Ip::V6),
        },
        // `::` includes `::1` (a local address) from the node, as 0.0.0.0 includes 127.0.0.1.
        RuleSpec {
            id: "dnat-any6",
            text: "meta nfproto ipv6 fib daddr type local dnat ip6 to meta l4proto . th dport map @ports_any6",
            exprs: dnat_any_address(Ip::V6),
        },
    ]
}

/// The constant rules. See the module docs for why they do not depend on the state.
fn chains() -> Vec<ChainSpec> {
    vec![
        forward_chain(),
        input_chain(),
        // Packets from other hosts and from endpoints (hairpin) to a published port.
        ChainSpec {
            name: "prerouting",
            kind: ChainKind::Nat,
            hook: Hook::Prerouting,
            priority: -100,
            rules: dnat_rules(),
        },
        // Packets from the node itself, including to 127.0.0.1 (needs route_localnet=1 on the
        // bridge, or the kernel drops a 127/8 source on a non-loopback device).
        ChainSpec {
            name: "output",
            kind: ChainKind::Nat,
            hook: Hook::Output,
            priority: -100,
            rules: dnat_rules(),
        },
        postrouting_chain(),
    ]
}

/// Isolation between networks, internal networks, and what may be routed into a bridge.
fn forward_chain() -> ChainSpec {
    let mut isolate = vec![
        meta(MetaKey::IifName, REG_1),
        lookup(SET_BRIDGES, REG_1),
        meta(MetaKey::OifName, REG_1),
        lookup(SET_BRIDGES, REG_1),
        meta(MetaKey::IifName, REG32_00),
        meta(MetaKey::OifName, REG32_04),
        lookup_not(SET_BRIDGE_PAIRS, REG32_00),
    ];
    isolate.push(Expr::Verdict(Verdict::Drop));

    // Routed into a Pier bridge from a non-Pier interface (another host, Docker's bridge, a VPN):
    // only replies and connections a published port DNATed pass, as with Docker 28. Without
    // this, anyone with a route to a container subnet via the node reaches every container port.
    let mut published_only = [
        in_set(MetaKey::OifName, SET_BRIDGES),
        not_in_set(MetaKey::IifName, SET_BRIDGES),
    ]
    .concat();
    published_only.extend(new_and_not_dnated());
    published_only.push(Expr::Verdict(Verdict::Drop));

    // From a Pier bridge into another engine's bridge (Docker's docker0, libvirt's virbr0): only
    // replies and connections to that engine's published ports (DNATed) pass, as that engine
    // allows its own hosts. The accepts Pier adds to other firewalls are broad (see
    // iptables.rs), so this keeps the other engines' containers as closed to Pier's as to
    // anyone else's.
    let mut no_new_into_host_bridges = [
        in_set(MetaKey::IifName, SET_BRIDGES),
        in_set(MetaKey::OifName, SET_HOST_BRIDGES),
    ]
    .concat();
    no_new_into_host_bridges.extend(new_and_not_dnated());
    no_new_into_host_bridges.push(Expr::Verdict(Verdict::Drop));

    ChainSpec {
        name: "forward",
        kind: ChainKind::Filter,
        hook: Hook::Forward,
        priority: 0,
        rules: vec![
            // Routed between two different Pier bridges: networks are isolated. Same-bridge
            // routed traffic (hairpin after DNAT) is in bridge_pairs and passes.
            RuleSpec {
                id: "isolate-networks",
                text: "iifname @bridges oifname @bridges iifname . oifname != @bridge_pairs drop",
                exprs: isolate,
            },
            // Internal networks: nothing in from, or out to, a non-Pier interface.
            RuleSpec {
                id: "internal-no-egress",
                text: "iifname @internal_bridges oifname != @bridges drop",
                exprs: vec![
                    meta(MetaKey::IifName, REG_1),
                    lookup(SET_INTERNAL, REG_1),
                    meta(MetaKey::OifName, REG_1),
                    lookup_not(SET_BRIDGES, REG_1),
                    Expr::Verdict(Verdict::Drop),
                ],
            },
            RuleSpec {
                id: "internal-no-ingress",
                text: "oifname @internal_bridges iifname != @bridges drop",
                exprs: vec![
                    meta(MetaKey::OifName, REG_1),
                    lookup(SET_INTERNAL, REG_1),
                    meta(MetaKey::IifName, REG_1),
                    lookup_not(SET_BRIDGES, REG_1),
                    Expr::Verdict(Verdict::Drop),
                ],
            },
            RuleSpec {
                id: "no-new-into-host-bridges",
                text: "iifname @bridges oifname @host_bridges ct state ! established,related ct status ! dnat drop",
                exprs: no_new_into_host_bridges,
            },
            RuleSpec {
                id: "published-only",
                text: "oifname @bridges iifname != @bridges ct state ! established,related ct status ! dnat drop",
                exprs: published_only,
            },
        ],
    }
}

/// Nothing from a bridge to the node's loopback-only services.
fn input_chain() -> ChainSpec {
    // A container sending to 127.0.0.0/8 via its gateway: the bridges have route_localnet=1 (for
    // 127.0.0.1:hostPort from the node), which would deliver it to the node's loopback-only
    // services (CVE-2020-8558). A DNATed packet no longer has a 127/8 destination here; a reply
    // to the node's own 127.0.0.1:hostPort connection does (the loopback masquerade is undone),
    // and is established.
    let mut no_loopback = in_set(MetaKey::IifName, SET_BRIDGES).to_vec();
    no_loopback.extend(ip_addr_loopback(IP_DADDR_OFFSET));
    no_loopback.push(Expr::CtState { dreg: REG_1 });
    no_loopback.extend(none_of(CT_STATE_ESTABLISHED | CT_STATE_RELATED));
    no_loopback.push(Expr::Verdict(Verdict::Drop));

    ChainSpec {
        name: "input",
        kind: ChainKind::Filter,
        hook: Hook::Input,
        priority: 0,
        rules: vec![
            RuleSpec {
                id: "no-loopback-from-bridges",
                text: "iifname @bridges ip daddr 127.0.0.0/8 ct state ! established,related drop",
                exprs: no_loopback,
            },
            // A VXLAN packet is a frame put straight onto the overlay's bridge: from anyone but
            // a node with an endpoint of that network (a LAN host, a stale node) it would
            // reach containers past every rule here. Other VXLAN ids (another program's
            // overlay on the same port) are not Pier's to judge. The outer source address is
            // all there is to go by: a host that forges a peer's can still send (one way).
            RuleSpec {
                id: "overlay-peers-only",
                text: OVERLAY_PEERS_ONLY,
                exprs: overlay_peers_only(),
            },
        ],
    }
}

/// What `nft list` prints for the rule `overlay-peers-only` (the port is [`VXLAN_PORT`]).
pub const OVERLAY_PEERS_ONLY: &str =
    "udp dport 4789 @th,96,24 @overlay_ids @th,96,24 . ip saddr != @overlay_peers drop";

/// Where the VXLAN id starts, counted from the UDP header: 8 bytes of UDP, then the VXLAN
/// header's flags (1) and reserved bytes (3).
const VXLAN_ID_OFFSET: u32 = 12;

/// `udp dport 4789 @th,96,24 @overlay_ids @th,96,24 . ip saddr != @overlay_peers drop`, as nft
/// compiles it.
fn overlay_peers_only() -> Vec<Expr> {
    let vxlan_id = || Expr::Payload {
        base: PayloadBase::Transport,
        offset: VXLAN_ID_OFFSET,
        len: 3,
        dreg: REG_1,
    };
    let mut exprs = Expr::l4_dport(l4proto(Protocol::Udp), VXLAN_PORT).to_vec();
    exprs.extend([vxlan_id(), lookup(SET_OVERLAY_IDS, REG_1)]);
    exprs.extend(Expr::is_ipv4());
    exprs.extend([
        vxlan_id(),
        Expr::Payload {
            base: PayloadBase::Network,
            offset: IP_SADDR_OFFSET,
            len: 4,
            dreg: REG32_01,
        },
        lookup_not(SET_OVERLAY_PEERS, REG_1),
        Expr::Verdict(Verdict::Drop),
    ]);
    exprs
}

/// `ip saddr @masq_subnets oifname != @bridges masquerade` (or `ip6` and `@masq_subnets6`).
fn masquerade_egress(ip: Ip) -> Vec<Expr> {
    let mut exprs = ip.nfproto().to_vec();
    exprs.extend([
        ip.saddr(),
        lookup(ip.masquerade_set(), REG_1),
        meta(MetaKey::OifName, REG_1),
        lookup_not(SET_BRIDGES, REG_1),
        Expr::Masquerade,
    ]);
    exprs
}

/// `ip saddr @masq_subnets oifname @bridges ct status dnat masquerade` (or `ip6`).
fn masquerade_hairpin(ip: Ip) -> Vec<Expr> {
    let mut exprs = ip.nfproto().to_vec();
    exprs.extend([
        ip.saddr(),
        lookup(ip.masquerade_set(), REG_1),
        meta(MetaKey::OifName, REG_1),
        lookup(SET_BRIDGES, REG_1),
        Expr::CtStatus { dreg: REG_1 },
        Expr::Bitwise {
            sreg: REG_1,
            dreg: REG_1,
            mask: IPS_DST_NAT.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        },
        Expr::Cmp {
            op: CmpOp::Neq,
            sreg: REG_1,
            data: vec![0; 4],
        },
        Expr::Masquerade,
    ]);
    exprs
}

/// `ip6 saddr ::1 oifname @bridges masquerade`.
fn masquerade_loopback6() -> Vec<Expr> {
    let mut exprs = Expr::is_ipv6().to_vec();
    exprs.extend([
        Ip::V6.saddr(),
        Expr::Cmp {
            op: CmpOp::Eq,
            sreg: REG_1,
            data: Ipv6Addr::LOCALHOST.octets().to_vec(),
        },
    ]);
    exprs.extend(in_set(MetaKey::OifName, SET_BRIDGES));
    exprs.push(Expr::Masquerade);
    exprs
}

/// Masquerade: egress, hairpin through a published port, and the node's loopback connections,
/// for IPv4 then IPv6.
fn postrouting_chain() -> ChainSpec {
    let mut masq_loopback = ip_addr_loopback(IP_SADDR_OFFSET);
    masq_loopback.extend(in_set(MetaKey::OifName, SET_BRIDGES));
    masq_loopback.push(Expr::Masquerade);

    ChainSpec {
        name: "postrouting",
        kind: ChainKind::Nat,
        hook: Hook::Postrouting,
        priority: 100,
        rules: vec![
            // Docker's `-s SUBNET ! -o BRIDGE -j MASQUERADE`, for all networks at once.
            RuleSpec {
                id: "masquerade-egress",
                text: "ip saddr @masq_subnets oifname != @bridges masquerade",
                exprs: masquerade_egress(Ip::V4),
            },
            // Hairpin: an endpoint reached its own bridge through a published port. Without
            // SNAT the reply would go straight back endpoint-to-endpoint, bypassing the
            // reverse DNAT. Isolation drops DNATed traffic between different bridges, so a
            // DNATed packet from a Pier subnet leaving to a Pier bridge is always same-bridge.
            RuleSpec {
                id: "masquerade-hairpin",
                text: "ip saddr @masq_subnets oifname @bridges ct status dnat masquerade",
                exprs: masquerade_hairpin(Ip::V4),
            },
            // 127.0.0.1:hostPort from the node: the endpoint cannot answer a loopback source.
            RuleSpec {
                id: "masquerade-loopback",
                text: "ip saddr 127.0.0.0/8 oifname @bridges masquerade",
                exprs: masq_loopback,
            },
            // IPv6 subnets are masqueraded too, as Docker does by default (its ip6tables NAT).
            RuleSpec {
                id: "masquerade-egress6",
                text: "ip6 saddr @masq_subnets6 oifname != @bridges masquerade",
                exprs: masquerade_egress(Ip::V6),
            },
            RuleSpec {
                id: "masquerade-hairpin6",
                text: "ip6 saddr @masq_subnets6 oifname @bridges ct status dnat masquerade",
                exprs: masquerade_hairpin(Ip::V6),
            },
            // [::1]:hostPort from the node; the answers need table ip6 pier (module docs).
            RuleSpec {
                id: "masquerade-loopback6",
                text: "ip6 saddr ::1 oifname @bridges masquerade",
                exprs: masquerade_loopback6(),
            },
        ],
    }
}

impl fmt::Display for Ruleset {
    /// Roughly what `nft list table inet pier` (and `nft list table ip6 pier`) prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "table inet {TABLE} {{")?;
        for set in &self.sets {
            let kind = if set.data.is_empty() { "set" } else { "map" };
            writeln!(f, "\t{kind} {} {{", set.name)?;
            writeln!(f, "\t\ttype {}", set.type_text())?;
            if set.interval {
                writeln!(f, "\t\tflags interval")?;
            }
            for element in &set.elements {
                writeln!(f, "\t\telement {}", set.show(element))?;
            }
            writeln!(f, "\t}}")?;
        }
        for chain in &self.chains {
            write!(f, "{chain}")?;
        }
        writeln!(f, "}}")?;
        if let Some(chain) = &self.loopback6 {
            writeln!(f, "table ip6 {TABLE} {{")?;
            write!(f, "{chain}")?;
            writeln!(f, "}}")?;
        }
        Ok(())
    }
}

impl fmt::Display for ChainSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "\tchain {} {{", self.name)?;
        writeln!(
            f,
            "\t\ttype {} hook {} priority {}; policy accept;",
            self.kind.as_str(),
            self.hook.as_str(),
            self.priority
        )?;
        for rule in &self.rules {
            writeln!(f, "\t\t{} comment \"{}\"", rule.text, rule.comment())?;
        }
        writeln!(f, "\t}}")
    }
}

mod loopback6;
#[cfg(test)]
mod tests;
