//! DNS views: pure logic from a `NodeState` to "this asking address sees these records".
//!
//! Docker semantics: a name resolves for an asker iff they share a network. The
//! asker is identified by its source address (IPv4 or IPv6) → its endpoint → the namespace that
//! endpoint lives in → every DNS-enabled network attached to that namespace (after `network
//! connect` it sees both). A name answers A with its members' IPv4 addresses and AAAA with their
//! IPv6 ones; a name with one family answers the other type with no records (NODATA), so a
//! resolver asking both keeps the name. Everything is precomputed here when the state changes, so
//! a query is one or two hash probes and never walks the state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use hickory_server::proto::rr::rdata::{A, AAAA, PTR};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType};

use crate::state::{
    Attachment, BridgeAttachment, EndpointState, Netns, NetworkState, NodeState, RemoteEndpoint,
};

use super::wire::{self, WireAnswer, WireNames};

/// TTL of local answers: 0, so a reconnect or a removed endpoint is seen by the next query.
pub const LOCAL_TTL: u32 = 0;

/// How deep `container:` sharing chains are followed (a cycle in a broken state must not hang).
const MAX_SHARE_DEPTH: usize = 8;

/// What one namespace's endpoints may see: the union of their DNS-enabled networks.
#[derive(Debug, Default)]
pub struct View {
    /// The networks this view is made of, sorted (for tests and logs).
    pub networks: Vec<String>,
    /// Address records by lower-cased FQDN (`con1.`, `web.`, `con1.workshop-tage.`).
    names: HashMap<LowerName, NameRecords>,
    /// PTR records by reverse name (`2.0.18.172.in-addr.arpa.`, `…ip6.arpa.`).
    pointers: HashMap<LowerName, Vec<Record>>,
    /// Whether unknown names are forwarded upstream: false when every network is `internal`.
    pub forward: bool,
    /// A hash of everything the view was built from: equal inputs, reuse the view.
    fingerprint: u64,
    /// The address records of `names`, pre-encoded for the wire fast path.
    wire: WireNames,
}

/// The address records of one name: its A records, then its AAAA records, in one list so that
/// each type (and ANY) is one slice of it.
#[derive(Debug, Default)]
struct NameRecords {
    records: Vec<Record>,
    /// How many of `records` (the first ones) are A records.
    a: usize,
}

impl NameRecords {
    /// Adds a record once (a name may come from several networks with the same address).
    fn add(&mut self, record: Record) {
        if self.records.contains(&record) {
            return;
        }
        if matches!(record.data, RData::A(_)) {
            self.records.insert(self.a, record);
            self.a += 1;
        } else {
            self.records.push(record);
        }
    }

    /// The records of `kind`: A, AAAA or both (ANY); none for any other type.
    fn of(&self, kind: RecordType) -> &[Record] {
        match kind {
            RecordType::A => &self.records[..self.a],
            RecordType::AAAA => &self.records[self.a..],
            RecordType::ANY => &self.records,
            _ => &[],
        }
    }
}

/// The outcome of looking a question up in an asker's view.
#[derive(Debug, PartialEq)]
pub enum Resolution<'a> {
    /// The source address is no endpoint on this node: answer REFUSED (not an open resolver).
    Refused,
    /// A local name: these records (empty: the name exists but has no data of that type).
    Local(&'a [Record]),
    /// No such name here and it must not go upstream: NXDOMAIN.
    NxDomain,
    /// Not a local name: ask the node's upstream resolvers.
    Forward,
}

/// All views of one `NodeState`, keyed by asking address.
#[derive(Debug, Default)]
pub struct Views {
    /// Every address of every asking endpoint, IPv4 and IPv6.
    askers: HashMap<IpAddr, Arc<View>>,
    /// The views by network set, for reuse by the next rebuild.
    by_set: HashMap<Vec<String>, Arc<View>>,
    /// Gateways (IPv4 and IPv6) of DNS-enabled bridge networks: where the server listens.
    pub listen: BTreeSet<IpAddr>,
}

/// Whether the embedded DNS serves `network`: a bridge or overlay with DNS on and a gateway.
fn serves(network: &NetworkState) -> bool {
    network.driver.has_bridge()
        && network.dns
        && (network.gateway.is_some() || network.gateway6.is_some())
}

/// An endpoint's addresses, IPv4 and IPv6.
fn both(address: Option<Ipv4Addr>, address6: Option<Ipv6Addr>) -> impl Iterator<Item = IpAddr> {
    address
        .map(IpAddr::V4)
        .into_iter()
        .chain(address6.map(IpAddr::V6))
}

impl Views {
    /// Builds every view of `state`. Names that are not valid DNS names are skipped (the operator
    /// validates names; a bad one must not take the others down).
    pub fn build(state: &NodeState) -> Views {
        Views::rebuild(state, None)
    }

    /// Like `build`, but reuses every view of `previous` whose inputs (its networks' flags and
    /// members) did not change, so an update costs what changed, not the size of the node.
    pub fn rebuild(state: &NodeState, previous: Option<&Views>) -> Views {
        let networks = state.networks_by_name();
        let dns_network = |name: &str| networks.get(name).is_some_and(|n| serves(n));

        // Per namespace: its addresses (the asker keys) and its DNS-enabled networks.
        let mut addresses: BTreeMap<Netns, Vec<IpAddr>> = BTreeMap::new();
        let mut attached: BTreeMap<Netns, BTreeSet<&str>> = BTreeMap::new();
        // Per DNS network: the names and addresses of its endpoints.
        let mut members: BTreeMap<&str, Vec<Member<'_>>> = BTreeMap::new();
        for endpoint in &state.endpoints {
            let Attachment::Bridge(bridge) = &endpoint.attachment else {
                continue;
            };
            let Some(member) = Member::local(endpoint, bridge) else {
                continue;
            };
            let Some(netns) = namespace_of(state, endpoint) else {
                continue;
            };
            addresses
                .entry(netns.clone())
                .or_default()
                .extend(both(bridge.address, bridge.address6));
            if dns_network(&bridge.network) {
                attached
                    .entry(netns)
                    .or_default()
                    .insert(bridge.network.as_str());
                members
                    .entry(bridge.network.as_str())
                    .or_default()
                    .push(member);
            }
        }
        // An overlay's endpoints on other nodes are names here too (they ask their own node).
        for remote in &state.remote_endpoints {
            if let (true, Some(member)) = (dns_network(&remote.network), Member::remote(remote)) {
                members
                    .entry(remote.network.as_str())
                    .or_default()
                    .push(member);
            }
        }

        // One view per distinct set of networks: namespaces on the same networks share it.
        let mut by_set: HashMap<BTreeSet<&str>, Arc<View>> = HashMap::new();
        let mut askers = HashMap::new();
        let forwards = |n: &str| networks.get(n).is_some_and(|n| !n.internal);
        for (netns, set) in &attached {
            // Usually every namespace is on the same few sets: look up before cloning the key.
            let view = match by_set.get(set) {
                Some(view) => view.clone(),
                None => {
                    let fingerprint = fingerprint(set, &members, forwards);
                    let key: Vec<String> = set.iter().map(|n| (*n).to_owned()).collect();
                    let view = match previous.and_then(|p| p.by_set.get(&key)) {
                        Some(old) if old.fingerprint == fingerprint => old.clone(),
                        _ => Arc::new(build_view(set, &members, forwards, fingerprint)),
                    };
                    by_set.insert(set.clone(), view.clone());
                    view
                }
            };
            for address in addresses.get(netns).into_iter().flatten() {
                askers.insert(*address, view.clone());
            }
        }

        let listen = state
            .networks
            .iter()
            .filter(|n| serves(n))
            .flat_map(|n| both(n.gateway, n.gateway6))
            .collect();
        let by_set = by_set
            .into_iter()
            .map(|(set, view)| (set.into_iter().map(str::to_owned).collect(), view))
            .collect();
        Views {
            askers,
            by_set,
            listen,
        }
    }

    /// The view of the asker at `source`, if it is an endpoint on a DNS-enabled network here.
    /// An IPv4-mapped IPv6 source (`::ffff:172.18.0.2`) is the IPv4 asker.
    pub fn view_of(&self, source: IpAddr) -> Option<&View> {
        self.askers.get(&source.to_canonical()).map(Arc::as_ref)
    }

    /// Looks `name`/`kind` up as the asker at `source` sees it.
    pub fn resolve(&self, source: IpAddr, name: &LowerName, kind: RecordType) -> Resolution<'_> {
        match self.view_of(source) {
            None => Resolution::Refused,
            Some(view) => view.resolve(name, kind),
        }
    }
}

impl View {
    /// Looks a question up. Names of networks the asker is not on are simply absent from the
    /// view, so they take exactly the path of a name that exists nowhere (no leak).
    pub fn resolve(&self, name: &LowerName, kind: RecordType) -> Resolution<'_> {
        let names = self.names.get(name);
        let pointers = self.pointers.get(name);
        match (kind, names, pointers) {
            (RecordType::A | RecordType::AAAA | RecordType::ANY, Some(found), _) => {
                Resolution::Local(found.of(kind))
            }
            (RecordType::PTR | RecordType::ANY, _, Some(records)) => Resolution::Local(records),
            // The name is ours but has no data of this type (MX, ...): NODATA, never forwarded
            // (the upstream would answer for a different name space).
            (_, Some(_), _) | (_, _, Some(_)) => Resolution::Local(&[]),
            // Single-label names are container names or typos: sending them upstream leaks them
            // and only ever gets NXDOMAIN back.
            _ if name.num_labels() <= 1 => Resolution::NxDomain,
            _ if self.forward => Resolution::Forward,
            _ => Resolution::NxDomain,
        }
    }

    /// The pre-encoded A and AAAA records of a lower-cased wire-format name.
    pub fn wire(&self, name: &[u8]) -> Option<&WireAnswer> {
        self.wire.get(name)
    }

    /// Number of distinct names (for logs and tests).
    pub fn name_count(&self) -> usize {
        self.names.len()
    }
}

/// One name-holder of a network: an endpoint on this node or (overlay) on another, with at
/// least one address.
#[derive(Debug, Clone, Copy)]
struct Member<'a> {
    name: &'a str,
    aliases: &'a [String],
    address: Option<Ipv4Addr>,
    address6: Option<Ipv6Addr>,
}

impl<'a> Member<'a> {
    /// An endpoint here; `None` when it has no address at all (nothing to answer).
    fn local(endpoint: &'a EndpointState, bridge: &BridgeAttachment) -> Option<Member<'a>> {
        let (address, address6) = (bridge.address, bridge.address6);
        (address.is_some() || address6.is_some()).then_some(Member {
            name: &endpoint.name,
            aliases: &endpoint.aliases,
            address,
            address6,
        })
    }

    fn remote(endpoint: &'a RemoteEndpoint) -> Option<Member<'a>> {
        let (address, address6) = (endpoint.address, endpoint.address6);
        (address.is_some() || address6.is_some()).then_some(Member {
            name: &endpoint.name,
            aliases: &endpoint.aliases,
            address,
            address6,
        })
    }

    /// The address records of this member under `name`: A first, then AAAA.
    fn records(&self, name: &Name) -> impl Iterator<Item = Record> {
        let a = self.address.map(|a| RData::A(A(a)));
        let aaaa = self.address6.map(|a| RData::AAAA(AAAA(a)));
        a.into_iter()
            .chain(aaaa)
            .map(move |data| Record::from_rdata(name.clone(), LOCAL_TTL, data))
    }
}

/// What a view depends on: its networks (names, whether they forward) and their members' names,
/// aliases and addresses, in state order.
fn fingerprint(
    set: &BTreeSet<&str>,
    members: &BTreeMap<&str, Vec<Member<'_>>>,
    forwards: impl Fn(&str) -> bool,
) -> u64 {
    use std::hash::{Hash, Hasher};
    // Fixed keys: fingerprints are compared within one process only, but must be stable there.
    let mut hasher = std::hash::DefaultHasher::new();
    for network in set {
        network.hash(&mut hasher);
        forwards(network).hash(&mut hasher);
        for member in members.get(network).into_iter().flatten() {
            member.name.hash(&mut hasher);
            member.aliases.hash(&mut hasher);
            member.address.hash(&mut hasher);
            member.address6.hash(&mut hasher);
        }
    }
    hasher.finish()
}

fn build_view(
    set: &BTreeSet<&str>,
    members: &BTreeMap<&str, Vec<Member<'_>>>,
    forwards: impl Fn(&str) -> bool,
    fingerprint: u64,
) -> View {
    let endpoints: usize = set
        .iter()
        .filter_map(|n| members.get(n))
        .map(Vec::len)
        .sum();
    let mut view = View {
        networks: set.iter().map(|n| (*n).to_owned()).collect(),
        forward: set.iter().any(|n| forwards(n)),
        fingerprint,
        // Two names (NAME, NAME.NETWORK) per endpoint at least; growing the tables costs more.
        names: HashMap::with_capacity(endpoints * 2),
        pointers: HashMap::with_capacity(endpoints),
        ..View::default()
    };
    for network in set {
        for member in members.get(network).into_iter().flatten() {
            add_member(&mut view, network, member);
        }
    }
    view.wire = view
        .names
        .iter()
        .filter_map(|(name, found)| Some((wire::wire_name(name), wire::encode(&found.records)?)))
        .collect();
    view
}

/// Adds a member's names (NAME, aliases, each also as NAME.NETWORK) and its reverse names.
fn add_member(view: &mut View, network: &str, member: &Member<'_>) {
    let short = std::iter::once(member.name).chain(member.aliases.iter().map(String::as_str));
    for label in short {
        for fqdn in [format!("{label}."), format!("{label}.{network}.")] {
            let Ok(name) = Name::from_ascii(fqdn.to_ascii_lowercase()) else {
                tracing::warn!(name = fqdn, "skipping a name that is not a valid DNS name");
                continue;
            };
            let found = view.names.entry(LowerName::new(&name)).or_default();
            for record in member.records(&name) {
                found.add(record);
            }
        }
    }
    // PTR answers with `NAME.NETWORK.`, as Docker does, for each family's address.
    let Ok(target) = Name::from_ascii(format!("{}.{network}.", member.name)) else {
        return;
    };
    for address in both(member.address, member.address6) {
        let reverse = Name::from(address);
        let record =
            Record::from_rdata(reverse.clone(), LOCAL_TTL, RData::PTR(PTR(target.clone())));
        let records = view.pointers.entry(LowerName::new(&reverse)).or_default();
        if !records.contains(&record) {
            records.push(record);
        }
    }
}

/// The namespace an endpoint's traffic comes from: its own, or for container mode the one of the
/// endpoint it shares (followed through chains).
pub fn namespace_of(state: &NodeState, endpoint: &EndpointState) -> Option<Netns> {
    let mut current = endpoint;
    for _ in 0..MAX_SHARE_DEPTH {
        match &current.attachment {
            Attachment::Shared { endpoint: target } => {
                current = state.endpoints.iter().find(|e| &e.id == target)?;
            }
            _ => return Some(current.netns.clone()),
        }
    }
    None
}

/// Per namespace, the nameservers its resolver should ask: one per DNS-enabled network it is
/// attached to, the default-route network first, then in state order. Like Docker, which writes
/// its one internal resolver address whatever the families, a network gives one address: its
/// IPv4 gateway, or on an IPv6-only network its IPv6 gateway (glibc reads three nameservers at
/// most, and both gateways of a network are the same server).
pub fn namespace_gateways(state: &NodeState) -> BTreeMap<Netns, Vec<IpAddr>> {
    let networks = state.networks_by_name();
    let mut out: BTreeMap<Netns, Vec<(bool, IpAddr)>> = BTreeMap::new();
    for endpoint in &state.endpoints {
        let Attachment::Bridge(bridge) = &endpoint.attachment else {
            continue;
        };
        let Some(network) = networks.get(bridge.network.as_str()) else {
            continue;
        };
        let Some(gateway) = both(network.gateway, network.gateway6).next() else {
            continue;
        };
        if !serves(network) {
            continue;
        }
        let Some(netns) = namespace_of(state, endpoint) else {
            continue;
        };
        let gateways = out.entry(netns).or_default();
        if !gateways.iter().any(|(_, g)| *g == gateway) {
            gateways.push((bridge.default_route, gateway));
        }
    }
    out.into_iter()
        .map(|(netns, mut gateways)| {
            // Stable: the default-route network first, the rest keep their order.
            gateways.sort_by_key(|(default, _)| !*default);
            (netns, gateways.into_iter().map(|(_, g)| g).collect())
        })
        .collect()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::state::{BridgeAttachment, Driver, NetworkState};

    /// A bridge network with DNS, IPv4 only.
    pub(crate) fn network(name: &str, subnet: &str, gateway: &str) -> NetworkState {
        NetworkState {
            name: name.into(),
            uid: format!("uid-{name}"),
            driver: Driver::Bridge,
            subnet: Some(subnet.parse().expect("subnet")),
            gateway: Some(gateway.parse().expect("gateway")),
            mtu: 1500,
            internal: false,
            dns: true,
            vxlan_id: None,
            subnet6: None,
            gateway6: None,
        }
    }

    /// Endpoint `id` ("namespace/name") in netns `ns` with `address` on `network`.
    pub(crate) fn endpoint(id: &str, ns: &str, network: &str, address: &str) -> EndpointState {
        EndpointState {
            id: id.into(),
            uid: format!("uid-{id}"),
            name: id.rsplit('/').next().unwrap_or(id).into(),
            aliases: vec![],
            netns: Netns::Named(ns.into()),
            attachment: Attachment::Bridge(BridgeAttachment {
                network: network.into(),
                interface: "eth0".into(),
                address: address.parse().ok(),
                address6: None,
                mac: "02:42:00:00:00:01".into(),
                default_route: true,
            }),
        }
    }

    /// The lesson: con1, con2 on workshop-tage; con3 on ch-open.
    fn lesson() -> NodeState {
        NodeState {
            networks: vec![
                network("workshop-tage", "172.18.0.0/16", "172.18.0.1"),
                network("ch-open", "172.19.0.0/16", "172.19.0.1"),
            ],
            endpoints: vec![
                endpoint("default/con1", "con1", "workshop-tage", "172.18.0.2"),
                endpoint("default/con2", "con2", "workshop-tage", "172.18.0.3"),
                endpoint("default/con3", "con3", "ch-open", "172.19.0.2"),
            ],
            ports: vec![],
            ..NodeState::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn name(s: &str) -> LowerName {
        LowerName::new(&Name::from_ascii(s).expect("name"))
    }

    fn addresses(resolution: Resolution<'_>) -> Vec<Ipv4Addr> {
        match resolution {
            Resolution::Local(records) => records
                .iter()
                .filter_map(|r| match r.data {
                    RData::A(A(a)) => Some(a),
                    _ => None,
                })
                .collect(),
            other => panic!("expected local records, got {other:?}"),
        }
    }

    #[test]
    fn endpoints_on_one_network_see_each_other() {
        let views = Views::build(&lesson());
        let got = views.resolve(ip("172.18.0.3"), &name("con1."), RecordType::A);
        assert_eq!(addresses(got), vec![ip4("172.18.0.2")]);
        let got = views.resolve(
            ip("172.18.0.2"),
            &name("CON2.workshop-tage."),
            RecordType::A,
        );
        assert_eq!(addresses(got), vec![ip4("172.18.0.3")]);
    }

    fn ip4(s: &str) -> Ipv4Addr {
        s.parse().expect("ipv4")
    }

    #[test]
    fn other_networks_names_are_exactly_like_unknown_names() {
        let views = Views::build(&lesson());
        let from_con3 = ip("172.19.0.2");
        for kind in [RecordType::A, RecordType::AAAA, RecordType::PTR] {
            assert_eq!(
                views.resolve(from_con3, &name("con1."), kind),
                views.resolve(from_con3, &name("nosuchname."), kind),
            );
            assert_eq!(
                views.resolve(from_con3, &name("con1.workshop-tage."), kind),
                views.resolve(from_con3, &name("nosuch.workshop-tage."), kind),
            );
            assert_eq!(
                views.resolve(from_con3, &name("2.0.18.172.in-addr.arpa."), kind),
                views.resolve(from_con3, &name("99.0.18.172.in-addr.arpa."), kind),
            );
        }
        assert_eq!(
            views.resolve(from_con3, &name("con1."), RecordType::A),
            Resolution::NxDomain
        );
        assert_eq!(
            views.resolve(from_con3, &name("con1.workshop-tage."), RecordType::A),
            Resolution::Forward
        );
    }

    /// An overlay's endpoints on other nodes resolve for its endpoints here, and only for them;
    /// they never ask this node (no view is keyed by their address).
    #[test]
    fn remote_overlay_endpoints_resolve_within_their_network() {
        let mut state = lesson();
        state.networks[0].driver = Driver::Overlay;
        state.networks[0].vxlan_id = Some(4096);
        state.remote_endpoints = vec![RemoteEndpoint {
            id: "default/far".into(),
            name: "far".into(),
            aliases: vec!["web".into()],
            network: "workshop-tage".into(),
            address: Some(ip4("172.18.0.9")),
            address6: None,
            mac: "02:42:ac:12:00:09".into(),
            node: "node-b".into(),
            tunnel: ip4("10.0.0.2"),
        }];
        let views = Views::build(&state);
        let from_con1 = ip("172.18.0.2");
        for asked in ["far.", "web.", "far.workshop-tage."] {
            let got = views.resolve(from_con1, &name(asked), RecordType::A);
            assert_eq!(addresses(got), vec![ip4("172.18.0.9")], "{asked}");
        }
        let ptr = views.resolve(
            from_con1,
            &name("9.0.18.172.in-addr.arpa."),
            RecordType::PTR,
        );
        assert!(matches!(ptr, Resolution::Local(records) if records.len() == 1));
        let from_con3 = ip("172.19.0.2");
        assert_eq!(
            views.resolve(from_con3, &name("far."), RecordType::A),
            Resolution::NxDomain
        );
        assert_eq!(
            views.resolve(ip("172.18.0.9"), &name("con1."), RecordType::A),
            Resolution::Refused
        );
        assert!(views.listen.contains(&ip("172.18.0.1")));
    }

    #[test]
    fn connecting_a_second_network_shows_both() {
        let mut state = lesson();
        let mut second = endpoint("default/con3-wt", "con3", "workshop-tage", "172.18.0.4");
        second.name = "con3".into();
        if let Attachment::Bridge(b) = &mut second.attachment {
            b.default_route = false;
        }
        state.endpoints.push(second);
        let views = Views::build(&state);
        // From either of con3's addresses: names of both networks.
        for source in ["172.19.0.2", "172.18.0.4"] {
            let got = views.resolve(ip(source), &name("con1."), RecordType::A);
            assert_eq!(addresses(got), vec![ip4("172.18.0.2")], "from {source}");
        }
        let mut both = addresses(views.resolve(ip("172.19.0.2"), &name("con3."), RecordType::A));
        both.sort();
        assert_eq!(both, vec![ip4("172.18.0.4"), ip4("172.19.0.2")]);
        // con1 now sees con3's workshop-tage address only.
        let got = views.resolve(ip("172.18.0.2"), &name("con3."), RecordType::A);
        assert_eq!(addresses(got), vec![ip4("172.18.0.4")]);
        assert_eq!(
            namespace_gateways(&state)[&Netns::Named("con3".into())],
            vec![ip("172.19.0.1"), ip("172.18.0.1")]
        );
    }

    #[test]
    fn one_alias_on_several_endpoints_gives_every_address() {
        let mut state = lesson();
        state.endpoints[0].aliases = vec!["web".into()];
        state.endpoints[1].aliases = vec!["web".into(), "www".into()];
        let views = Views::build(&state);
        let mut got = addresses(views.resolve(ip("172.18.0.2"), &name("web."), RecordType::A));
        got.sort();
        assert_eq!(got, vec![ip4("172.18.0.2"), ip4("172.18.0.3")]);
        let got =
            addresses(views.resolve(ip("172.18.0.2"), &name("www.workshop-tage."), RecordType::A));
        assert_eq!(got, vec![ip4("172.18.0.3")]);
        assert!(matches!(
            views.resolve(ip("172.19.0.2"), &name("web."), RecordType::A),
            Resolution::NxDomain
        ));
    }

    #[test]
    fn ptr_answers_name_dot_network_with_ttl_zero() {
        let views = Views::build(&lesson());
        let Resolution::Local(records) = views.resolve(
            ip("172.18.0.3"),
            &name("2.0.18.172.in-addr.arpa."),
            RecordType::PTR,
        ) else {
            panic!("expected a PTR record");
        };
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].ttl, LOCAL_TTL);
        assert_eq!(
            records[0].data,
            RData::PTR(PTR(Name::from_ascii("con1.workshop-tage.").expect("name")))
        );
    }

    #[test]
    fn nodata_for_other_types_refused_for_strangers_internal_not_forwarded() {
        let mut state = lesson();
        let views = Views::build(&state);
        assert_eq!(
            views.resolve(ip("172.18.0.2"), &name("con2."), RecordType::AAAA),
            Resolution::Local(&[])
        );
        assert_eq!(
            views.resolve(ip("10.9.9.9"), &name("con2."), RecordType::A),
            Resolution::Refused
        );
        assert_eq!(
            views.resolve(ip("172.18.0.2"), &name("example.com."), RecordType::A),
            Resolution::Forward
        );
        state.networks[0].internal = true;
        let views = Views::build(&state);
        assert_eq!(
            views.resolve(ip("172.18.0.2"), &name("example.com."), RecordType::A),
            Resolution::NxDomain
        );
    }

    #[test]
    fn dns_disabled_networks_serve_nothing_and_get_no_listener() {
        let mut state = lesson();
        state.networks[1].dns = false;
        let views = Views::build(&state);
        assert_eq!(views.listen, BTreeSet::from([ip("172.18.0.1")]));
        assert_eq!(
            views.resolve(ip("172.19.0.2"), &name("con3."), RecordType::A),
            Resolution::Refused
        );
    }

    #[test]
    fn a_rebuild_reuses_the_views_of_unchanged_networks() {
        let state = lesson();
        let first = Views::build(&state);
        let mut next = state.clone();
        next.endpoints
            .push(endpoint("default/con4", "con4", "ch-open", "172.19.0.3"));
        let second = Views::rebuild(&next, Some(&first));
        let view =
            |views: &Views, source: &str| views.askers.get(&ip(source)).cloned().expect("asker");
        // workshop-tage did not change: the very same view; ch-open did: a new one.
        assert!(Arc::ptr_eq(
            &view(&first, "172.18.0.2"),
            &view(&second, "172.18.0.2")
        ));
        assert!(!Arc::ptr_eq(
            &view(&first, "172.19.0.2"),
            &view(&second, "172.19.0.2")
        ));
        let got = second.resolve(ip("172.19.0.2"), &name("con4."), RecordType::A);
        assert_eq!(addresses(got), vec![ip4("172.19.0.3")]);
        // An alias change on workshop-tage makes its view new too.
        let mut third = next.clone();
        third.endpoints[0].aliases = vec!["web".into()];
        let third_views = Views::rebuild(&third, Some(&second));
        assert!(!Arc::ptr_eq(
            &view(&second, "172.18.0.2"),
            &view(&third_views, "172.18.0.2")
        ));
    }

    #[test]
    fn container_mode_asks_with_the_shared_namespace() {
        let mut state = lesson();
        state.endpoints.push(EndpointState {
            id: "default/side".into(),
            uid: "uid-side".into(),
            name: "side".into(),
            aliases: vec![],
            netns: Netns::Named("side".into()),
            attachment: Attachment::Shared {
                endpoint: "default/con1".into(),
            },
        });
        assert_eq!(
            namespace_of(&state, &state.endpoints[3]),
            Some(Netns::Named("con1".into()))
        );
        // Like Docker, a container-mode sharer has no name of its own.
        let views = Views::build(&state);
        assert_eq!(
            views.resolve(ip("172.18.0.3"), &name("side."), RecordType::A),
            Resolution::NxDomain
        );
    }

    // IPv6 and dual-stack ---------------------------------------------------------------------

    fn ip6(s: &str) -> Ipv6Addr {
        s.parse().expect("ipv6")
    }

    fn with_ipv6(mut network: NetworkState, subnet6: &str, gateway6: &str) -> NetworkState {
        network.subnet6 = Some(subnet6.parse().expect("subnet6"));
        network.gateway6 = Some(ip6(gateway6));
        network
    }

    /// An endpoint with an IPv6 address (`address` empty: IPv6 only).
    fn endpoint6(
        id: &str,
        ns: &str,
        network: &str,
        address: &str,
        address6: &str,
    ) -> EndpointState {
        let mut endpoint = endpoint(id, ns, network, address);
        if let Attachment::Bridge(bridge) = &mut endpoint.attachment {
            bridge.address6 = Some(ip6(address6));
        }
        endpoint
    }

    /// workshop-tage dual-stack (con1, con2 with both families, con6 IPv4 only); ch-open IPv4
    /// only (con3); v6net IPv6 only (con4, con5).
    fn dual_stack() -> NodeState {
        let mut v6net = network("v6net", "10.99.0.0/16", "10.99.0.1");
        v6net.subnet = None;
        v6net.gateway = None;
        NodeState {
            networks: vec![
                with_ipv6(
                    network("workshop-tage", "172.18.0.0/16", "172.18.0.1"),
                    "fd00:18::/64",
                    "fd00:18::1",
                ),
                network("ch-open", "172.19.0.0/16", "172.19.0.1"),
                with_ipv6(v6net, "fd00:20::/64", "fd00:20::1"),
            ],
            endpoints: vec![
                endpoint6(
                    "default/con1",
                    "con1",
                    "workshop-tage",
                    "172.18.0.2",
                    "fd00:18::2",
                ),
                endpoint6(
                    "default/con2",
                    "con2",
                    "workshop-tage",
                    "172.18.0.3",
                    "fd00:18::3",
                ),
                endpoint("default/con3", "con3", "ch-open", "172.19.0.2"),
                endpoint6("default/con4", "con4", "v6net", "", "fd00:20::4"),
                endpoint6("default/con5", "con5", "v6net", "", "fd00:20::5"),
                endpoint("default/con6", "con6", "workshop-tage", "172.18.0.6"),
            ],
            ..NodeState::default()
        }
    }

    fn addresses6(resolution: Resolution<'_>) -> Vec<Ipv6Addr> {
        match resolution {
            Resolution::Local(records) => records
                .iter()
                .filter_map(|r| match r.data {
                    RData::AAAA(AAAA(a)) => Some(a),
                    _ => None,
                })
                .collect(),
            other => panic!("expected local records, got {other:?}"),
        }
    }

    #[test]
    fn aaaa_answers_ipv6_addresses_for_names_aliases_and_network_names() {
        let mut state = dual_stack();
        state.endpoints[0].aliases = vec!["web".into()];
        state.endpoints[1].aliases = vec!["web".into()];
        let views = Views::build(&state);
        // The same answers whichever of con2's addresses asks.
        for source in ["172.18.0.3", "fd00:18::3"] {
            let got = views.resolve(ip(source), &name("con1."), RecordType::AAAA);
            assert_eq!(addresses6(got), vec![ip6("fd00:18::2")], "from {source}");
            let got = views.resolve(ip(source), &name("con1."), RecordType::A);
            assert_eq!(addresses(got), vec![ip4("172.18.0.2")], "from {source}");
            let got = views.resolve(ip(source), &name("CON1.workshop-tage."), RecordType::AAAA);
            assert_eq!(addresses6(got), vec![ip6("fd00:18::2")], "from {source}");
            let mut got = addresses6(views.resolve(ip(source), &name("web."), RecordType::AAAA));
            got.sort();
            assert_eq!(
                got,
                vec![ip6("fd00:18::2"), ip6("fd00:18::3")],
                "from {source}"
            );
        }
        // ANY: both families, A first.
        let Resolution::Local(any) =
            views.resolve(ip("fd00:18::3"), &name("con1."), RecordType::ANY)
        else {
            panic!("expected local records");
        };
        assert_eq!(
            any.iter().map(|r| r.record_type()).collect::<Vec<_>>(),
            vec![RecordType::A, RecordType::AAAA]
        );
    }

    /// A name with one family exists for the other type too: NODATA, never NXDOMAIN (a resolver
    /// asking A and AAAA would otherwise give the name up) and never forwarded.
    #[test]
    fn a_name_with_one_family_answers_nodata_for_the_other() {
        let views = Views::build(&dual_stack());
        let from_con5 = ip("fd00:20::5");
        assert_eq!(
            addresses6(views.resolve(from_con5, &name("con4."), RecordType::AAAA)),
            vec![ip6("fd00:20::4")]
        );
        for asked in ["con4.", "con4.v6net."] {
            assert_eq!(
                views.resolve(from_con5, &name(asked), RecordType::A),
                Resolution::Local(&[]),
                "{asked}"
            );
        }
        let from_con1 = ip("fd00:18::2");
        assert_eq!(
            views.resolve(from_con1, &name("con6."), RecordType::AAAA),
            Resolution::Local(&[])
        );
        assert_eq!(
            addresses(views.resolve(from_con1, &name("con6."), RecordType::A)),
            vec![ip4("172.18.0.6")]
        );
    }

    /// IPv6 askers see exactly what their namespace sees; unknown IPv6 sources are refused; an
    /// IPv4-mapped source is its IPv4 asker.
    #[test]
    fn ipv6_askers_see_their_namespaces_networks_only() {
        let views = Views::build(&dual_stack());
        let from_con1 = ip("fd00:18::2");
        let from_con4 = ip("fd00:20::4");
        assert_eq!(
            views.resolve(from_con1, &name("con4."), RecordType::AAAA),
            views.resolve(from_con1, &name("nosuch."), RecordType::AAAA),
        );
        assert_eq!(
            views.resolve(from_con4, &name("con1."), RecordType::AAAA),
            Resolution::NxDomain
        );
        assert_eq!(
            views.resolve(from_con4, &name("con1.workshop-tage."), RecordType::AAAA),
            Resolution::Forward
        );
        assert_eq!(
            views.resolve(ip("fd00:18::99"), &name("con1."), RecordType::AAAA),
            Resolution::Refused
        );
        assert_eq!(
            addresses6(views.resolve(ip("::ffff:172.18.0.3"), &name("con1."), RecordType::AAAA)),
            vec![ip6("fd00:18::2")]
        );
    }

    #[test]
    fn ptr_in_ip6_arpa_answers_name_dot_network() {
        let views = Views::build(&dual_stack());
        let reverse = |address: &str| LowerName::new(&Name::from(ip(address)));
        for (source, address, target) in [
            ("fd00:18::3", "fd00:18::2", "con1.workshop-tage."),
            ("172.18.0.3", "fd00:18::2", "con1.workshop-tage."),
            ("172.18.0.3", "172.18.0.2", "con1.workshop-tage."),
            ("fd00:20::5", "fd00:20::4", "con4.v6net."),
        ] {
            let Resolution::Local(records) =
                views.resolve(ip(source), &reverse(address), RecordType::PTR)
            else {
                panic!("expected a PTR record for {address} from {source}");
            };
            assert_eq!(records.len(), 1);
            assert_eq!(records[0].ttl, LOCAL_TTL);
            assert_eq!(
                records[0].data,
                RData::PTR(PTR(Name::from_ascii(target).expect("name")))
            );
        }
        assert!(
            reverse("fd00:18::2").to_string().ends_with(".ip6.arpa."),
            "{}",
            reverse("fd00:18::2")
        );
        // From another network: exactly like an address that is nobody's.
        let from_con3 = ip("172.19.0.2");
        assert_eq!(
            views.resolve(from_con3, &reverse("fd00:18::2"), RecordType::PTR),
            views.resolve(from_con3, &reverse("fd00:18::99"), RecordType::PTR),
        );
    }

    #[test]
    fn both_gateways_are_listened_on_and_ipv6_only_resolv_conf_gets_gateway6() {
        let state = dual_stack();
        let views = Views::build(&state);
        assert_eq!(
            views.listen,
            BTreeSet::from([
                ip("172.18.0.1"),
                ip("172.19.0.1"),
                ip("fd00:18::1"),
                ip("fd00:20::1"),
            ])
        );
        let gateways = namespace_gateways(&state);
        assert_eq!(
            gateways[&Netns::Named("con1".into())],
            vec![ip("172.18.0.1")]
        );
        assert_eq!(
            gateways[&Netns::Named("con4".into())],
            vec![ip("fd00:20::1")]
        );
    }

    /// An overlay's IPv6-only endpoint on another node is a name here too.
    #[test]
    fn remote_ipv6_only_endpoints_resolve_and_have_ptr() {
        let mut state = dual_stack();
        state.networks[2].driver = Driver::Overlay;
        state.networks[2].vxlan_id = Some(4097);
        state.remote_endpoints = vec![RemoteEndpoint {
            id: "default/far".into(),
            name: "far".into(),
            aliases: vec![],
            network: "v6net".into(),
            address: None,
            address6: Some(ip6("fd00:20::9")),
            mac: "02:42:ac:14:00:09".into(),
            node: "node-b".into(),
            tunnel: ip4("10.0.0.2"),
        }];
        let views = Views::build(&state);
        let from_con4 = ip("fd00:20::4");
        assert_eq!(
            addresses6(views.resolve(from_con4, &name("far.v6net."), RecordType::AAAA)),
            vec![ip6("fd00:20::9")]
        );
        assert_eq!(
            views.resolve(from_con4, &name("far."), RecordType::A),
            Resolution::Local(&[])
        );
        let ptr = views.resolve(
            from_con4,
            &LowerName::new(&Name::from(ip("fd00:20::9"))),
            RecordType::PTR,
        );
        assert!(matches!(ptr, Resolution::Local(records) if records.len() == 1));
    }

    #[test]
    fn an_ipv6_address_change_makes_a_new_view() {
        let state = dual_stack();
        let first = Views::build(&state);
        let mut next = state.clone();
        if let Attachment::Bridge(bridge) = &mut next.endpoints[0].attachment {
            bridge.address6 = Some(ip6("fd00:18::22"));
        }
        let second = Views::rebuild(&next, Some(&first));
        let got = second.resolve(ip("fd00:18::3"), &name("con1."), RecordType::AAAA);
        assert_eq!(addresses6(got), vec![ip6("fd00:18::22")]);
        // The old address asks no more; the new one does.
        assert!(second.view_of(ip("fd00:18::2")).is_none());
        assert!(second.view_of(ip("fd00:18::22")).is_some());
    }
}

#[cfg(test)]
mod timing {
    use super::*;
    use crate::state::{BridgeAttachment, Driver, NetworkState};

    /// `cargo test --release -p pier-node --lib dns::views::timing -- --ignored --nocapture`:
    /// how long a rebuild of 200 endpoints' views takes (the update path's main cost).
    #[test]
    #[ignore = "timing, not a test"]
    fn rebuild_200_endpoints() {
        let state = NodeState {
            networks: vec![NetworkState {
                name: "bench".into(),
                uid: "u".into(),
                driver: Driver::Bridge,
                subnet: Some("172.30.0.0/24".parse().expect("subnet")),
                gateway: Some("172.30.0.1".parse().expect("gateway")),
                mtu: 1500,
                internal: false,
                dns: true,
                vxlan_id: None,
                subnet6: None,
                gateway6: None,
            }],
            endpoints: (0..200u8)
                .map(|i| EndpointState {
                    id: format!("default/svc{i}"),
                    uid: format!("u{i}"),
                    name: format!("svc{i}"),
                    aliases: vec![],
                    netns: Netns::Named(format!("ns{i}")),
                    attachment: Attachment::Bridge(BridgeAttachment {
                        network: "bench".into(),
                        interface: "eth0".into(),
                        address: Some(Ipv4Addr::new(172, 30, 0, i.wrapping_add(2))),
                        address6: None,
                        mac: "02:42:00:00:00:01".into(),
                        default_route: true,
                    }),
                })
                .collect(),
            ports: vec![],
            ..NodeState::default()
        };
        let rounds = 2000;
        let started = std::time::Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(Views::build(&state));
        }
        println!(
            "Views::build, 200 endpoints: {:?} each",
            started.elapsed() / rounds
        );
    }
}
